import numpy as np
import onnx
import pytest

from onnx_collapse.kinds.layers.common import bias_fits
from onnx_collapse.kinds.layers.matmul import MatMul
from tests.builders import ChainSpec, LayerSpec, analysed, build


def _match(model):
    view = analysed(model).view
    return MatMul().match(view, next(i for i, n in enumerate(view.nodes) if n.op == "MatMul")), view


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_takes_the_following_bias_add_in_either_order(bias_first):
    model = build(ChainSpec(3, [LayerSpec(4, op="matmul", bias_first=bias_first)], input_rank=3))
    layer, view = _match(model)
    assert len(layer.nodes) == 2 and layer.affine(view).bias.shape == (4,) and layer.output == "l0"
    assert layer.layout.input_rank == 3


def test_matmul_with_non_constant_weight_is_not_linear():
    model = build(ChainSpec(3, [LayerSpec(4, op="matmul")]))
    model.graph.node[0].input[1] = "x"
    assert "not a constant" in _match(model)[0]


def test_bias_shapes():
    assert bias_fits((), 3) and bias_fits((1,), 3) and bias_fits((1, 1, 3), 3)
    assert not bias_fits((2, 3), 3) and not bias_fits((4,), 3)


def test_empty_weight_is_not_a_linear_layer():
    model = build(ChainSpec(3, [LayerSpec(4, op="matmul", bias=None)]))
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.zeros((0, 4), np.float32), "w0"))
    assert "non-empty" in _match(model)[0]


def test_weight_behind_an_identity_is_a_constant():
    model = build(ChainSpec(3, [LayerSpec(4, op="matmul", bias=None)]))
    model.graph.node.insert(0, onnx.helper.make_node("Identity", ["w0"], ["w0_shared"]))
    model.graph.node[1].input[1] = "w0_shared"
    layer, view = _match(model)
    assert layer.weight == "w0_shared" and layer.affine(view).weight.shape == (3, 4)
