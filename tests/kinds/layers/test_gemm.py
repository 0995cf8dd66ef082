import numpy as np
import onnx
import pytest

from onnx_collapse.kinds.layers.gemm import Gemm
from tests.builders import ChainSpec, LayerSpec, analysed, build, run_model


def _match(model):
    view = analysed(model).view
    return Gemm().match(view, 0), view


@pytest.mark.parametrize("trans_b", [True, False])
@pytest.mark.parametrize("bias", [None, "vector", "row", "scalar", "one"])
def test_gemm_weight_and_bias_absorb_alpha_beta(trans_b, bias):
    model = build(ChainSpec(3, [LayerSpec(4, trans_b=trans_b, alpha=2.0, beta=0.5, bias=bias)]))
    layer, view = _match(model)
    affine = layer.affine(view)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    got = x.astype(np.float64) @ (affine.weight * affine.scale) + (0 if affine.bias is None else affine.bias)
    np.testing.assert_allclose(got, run_model(model, x=x)[0], rtol=1e-5, atol=1e-6)


def test_gemm_with_transposed_input_is_rejected_with_reason():
    model = build(ChainSpec(3, [LayerSpec(4)]))
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("transA", 1))
    assert "transA" in _match(model)[0]


def test_gemm_bias_per_batch_row_is_rejected():
    model = build(ChainSpec(3, [LayerSpec(4)]))
    bias = next(t for t in model.graph.initializer if t.name == "b0")
    bias.CopyFrom(onnx.numpy_helper.from_array(np.zeros((2, 4), np.float32), "b0"))
    assert "depends on the batch row" in _match(model)[0]


def test_gemm_emits_gemm_from_opset_11_and_matmul_before_without_bias():
    model = build(ChainSpec(3, [LayerSpec(4)]))
    layer, _ = _match(model)
    assert Gemm().emission(layer, "p", 11, 2, False, 2).linear is not None
    assert type(Gemm().emission(layer, "p", 11, 2, False, 2)).__name__ == "GemmEmission"
    assert type(Gemm().emission(layer, "p", 9, 2, False, 2)).__name__ == "MatMulEmission"
