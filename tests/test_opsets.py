"""Opsets 7 to the newest: the rewritten ops exist there, folds verify, and the model keeps its opset."""

import onnx
import pytest
from onnx import version_converter

from onnx_collapse import optimize
from tests.builders import ActSpec, ChainSpec, LayerSpec, build
from tests.common import MODELS
from tests.test_models import FOLDS

SPECS = {
    "gemm-prelu": ChainSpec(8, [LayerSpec(16), LayerSpec(4)], [ActSpec()]),
    "gemm-leaky-dropout": ChainSpec(8, [LayerSpec(16, trans_b=False), LayerSpec(4)],
                                    [ActSpec(kind="leaky", dropout=True)]),
    "matmul-3d": ChainSpec(8, [LayerSpec(16, op="matmul"), LayerSpec(4, op="matmul")], [ActSpec(shape="scalar")],
                           input_rank=3),
    "bottleneck-factor": ChainSpec(64, [LayerSpec(4), LayerSpec(4), LayerSpec(64)], [ActSpec(), ActSpec()]),
    "gemm-no-bias": ChainSpec(8, [LayerSpec(16, bias=None), LayerSpec(4, bias=None)], [ActSpec()]),
}


NEWEST = onnx.defs.onnx_opset_version()


@pytest.mark.parametrize("opset", sorted({7, 8, 9, 10, 11, 12, 13, 15, 17, 19, 21, 23, 25, NEWEST}))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_chain_folds_at_every_opset(name, opset):
    if name == "gemm-no-bias" and opset < 11:
        pytest.skip("a Gemm without bias C is only valid from opset 11")
    model = build(SPECS[name].__class__(**{**SPECS[name].__dict__, "opset": opset}))
    out, report = optimize(model)
    assert [r.status for r in report.folds] == ["folded"], report.folds
    assert report.verification.passed
    assert [(o.domain, o.version) for o in out.opset_import] == [(o.domain, o.version) for o in model.opset_import]
    onnx.checker.check_model(out)


@pytest.mark.parametrize("opset", [13, 15, 17, 19, 21, 23, NEWEST])
@pytest.mark.parametrize("name", sorted(FOLDS))
def test_shipped_models_converted_across_opsets(name, opset):
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    try:
        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - the converter lacks some down-conversion adapters
        pytest.skip(f"onnx.version_converter cannot take {name} to opset {opset}: {str(exc)[-80:]}")
    out, report = optimize(converted)
    assert [f.form for f in report.folded] == FOLDS[name]
    assert report.verification.passed
    assert out.opset_import == converted.opset_import
