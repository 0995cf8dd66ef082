import numpy as np
import pytest

from onnx_collapse import optimize
from onnx_collapse.kinds import Site
from tests.builders import ActSpec, ChainSpec, LayerSpec, analysed, build, mlp


@pytest.mark.parametrize("slope_shape,data_shape,ok", [
    ((4,), [None, 4], True),
    ((1, 4), [None, 4], True),
    ((1, 1, 4), [None, 4], False),  # would broadcast a 2-D tensor to 3-D
    ((3, 1), [None, 3, 4], True),  # torch per-channel slope on a 3-D input
    ((3, 1), [None, None, 4], False),  # cannot prove the token dim is 3
    ((5,), None, False),
    ((1,), None, True),
])
def test_slope_keeps_shape(slope_shape, data_shape, ok):
    assert Site("h", 4, None if data_shape is None else tuple(data_shape)).keeps_shape(slope_shape) is ok


@pytest.mark.parametrize("shape,axis,data,ok", [
    ((4,), -1, (None, 4), True), ((1, 4), -1, (None, 3, 4), True), ((3, 1), -1, (None, 3, 4), False),
    ((4, 1, 1), 1, (None, 4, 5, 5), True), ((1, 4, 1, 1), 1, (None, 4, 5, 5), True),
    ((4,), 1, (None, 4, 5, 4), False), ((1,), 1, (None, 4, 5, 5), True), ((4, 1, 1), 1, None, False),
])
def test_per_feature_constants_follow_the_feature_axis(shape, axis, data, ok):
    assert Site("h", 4, data, axis).per_feature(shape) is ok


def test_leaky_relu_slope_is_its_alpha():
    ctx = analysed(mlp(kind="leaky", slope=0.97))
    (link,) = ctx.segments[0].links[0]
    assert np.isclose(link.map.deviation, 0.03)


@pytest.mark.parametrize("shape", ["channel", "row", "scalar", "scalar2"])
def test_prelu_slope_shapes_are_links_and_count_their_parameters(shape):
    spec = ChainSpec(8, [LayerSpec(6), LayerSpec(4)], [ActSpec(shape=shape)])
    _, report = optimize(build(spec))
    slope = {"channel": 6, "row": 6, "scalar": 1, "scalar2": 1}[shape]
    assert report.folds[0].params_before == 8 * 6 + 6 + slope + 6 * 4 + 4


def test_prelu_slope_that_is_not_constant_ends_the_chain_with_a_reason():
    model = mlp()
    model.graph.node[1].input[1] = "x"
    ctx = analysed(model)
    assert ctx.segments == [] and any("slope is not a constant" in n for n in ctx.stops.values())
