import numpy as np
import pytest
from builders import ChainSpec, LayerSpec, build

from onnx_collapse.graph import GraphIndex
from onnx_collapse.passes.linear import bias_fits, match_gemm, match_matmul


def _index(model):
    return GraphIndex(model.graph)


@pytest.mark.parametrize("trans_b", [True, False])
@pytest.mark.parametrize("bias", [None, "vector", "row", "scalar", "one"])
def test_gemm_weight_and_bias_absorb_alpha_beta(trans_b, bias):
    model = build(ChainSpec(3, [LayerSpec(4, trans_b=trans_b, alpha=2.0, beta=0.5, bias=bias)]))
    index = _index(model)
    affine = match_gemm(index, 0).affine(index)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    import onnxruntime as ort

    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = x.astype(np.float64) @ (affine.weight * affine.scale) + (0 if affine.bias is None else affine.bias)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_gemm_with_transposed_input_is_rejected_with_reason():
    model = build(ChainSpec(3, [LayerSpec(4)]))
    model.graph.node[0].attribute.append(__import__("onnx").helper.make_attribute("transA", 1))
    assert "transA" in match_gemm(_index(model), 0)


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_takes_the_following_bias_add_in_either_order(bias_first):
    model = build(ChainSpec(3, [LayerSpec(4, op="matmul", bias_first=bias_first)], input_rank=3))
    index = _index(model)
    lin = match_matmul(index, 0)
    assert len(lin.nodes) == 2 and lin.affine(index).bias.shape == (4,) and lin.output == "l0"


def test_matmul_with_non_constant_weight_is_not_linear():
    model = build(ChainSpec(3, [LayerSpec(4, op="matmul")]))
    model.graph.node[0].input[1] = "x"
    assert "not a constant" in match_matmul(_index(model), 0)


def test_bias_shapes():
    assert bias_fits((), 3) and bias_fits((1,), 3) and bias_fits((1, 1, 3), 3)
    assert not bias_fits((2, 3), 3) and not bias_fits((4,), 3)


def test_empty_weight_is_not_a_linear_layer():
    model = build(ChainSpec(3, [LayerSpec(4, op="matmul", bias=None)]))
    model.graph.initializer[0].CopyFrom(__import__("onnx").numpy_helper.from_array(np.zeros((0, 4), np.float32), "w0"))
    assert "non-empty" in match_matmul(_index(model), 0)
