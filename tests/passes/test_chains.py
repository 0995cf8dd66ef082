import numpy as np
import pytest
from builders import ActSpec, ChainSpec, LayerSpec, build, mlp

from onnx_collapse.graph import GraphIndex, infer_shapes
from onnx_collapse.options import Options
from onnx_collapse.passes.base import Context
from onnx_collapse.passes.chains import FindChains, slope_keeps_shape
from onnx_collapse.passes.linear import FindLinearLayers


def _segments(model, slope_tol=0.05):
    ctx = Context(model, GraphIndex(model.graph, infer_shapes(model)), Options(slope_tol=slope_tol), 17)
    FindLinearLayers().run(ctx)
    FindChains().run(ctx)
    return ctx


def test_two_layers_through_prelu_form_one_segment():
    ctx = _segments(mlp())
    assert [len(s.linears) for s in ctx.segments] == [2]


def test_slope_outside_tolerance_splits_the_chain_and_says_why():
    spec = ChainSpec(8, [LayerSpec(8), LayerSpec(8), LayerSpec(8), LayerSpec(8)],
                     [ActSpec(slope=1.0), ActSpec(slope=0.5), ActSpec(slope=0.98)])
    ctx = _segments(build(spec))
    assert [len(s.linears) for s in ctx.segments] == [2, 2]
    assert any("0.5 is not within 0.05 of 1" in r.reason for r in ctx.records)


def test_dropout_and_identity_are_transparent():
    ctx = _segments(build(ChainSpec(8, [LayerSpec(8), LayerSpec(4)], [ActSpec(dropout=True)])))
    assert len(ctx.segments) == 1 and len(ctx.segments[0].links[0].nodes) == 2


def test_tensor_with_two_readers_ends_the_chain():
    model = mlp()
    model.graph.output.append(__import__("onnx").helper.make_tensor_value_info("l0", 1, None))
    ctx = _segments(model)
    assert ctx.segments == [] and any("chain stops" in n for n in ctx.notes)


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
    assert slope_keeps_shape(slope_shape, data_shape, 4) is ok


def test_leaky_relu_slope_is_its_alpha():
    ctx = _segments(mlp(kind="leaky", slope=0.97))
    act = ctx.segments[0].links[0].activation
    assert np.isclose(act.deviation, 0.03)
