"""Every shipped model (exported by torch, see models/export.py): optimize, then check what a user cares about."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS

from onnx_collapse import optimize

# model -> (folded chains, form of each fold)
FOLDS = {
    "mlp_prelu_channel": ["dense"],
    "mlp_prelu_scalar": ["dense"],
    "transformer_mlp_3d": ["dense"],
    "token_prelu_3d": ["dense"],
    "leaky_1": ["dense"],
    "three_layer": ["dense"],
    "bottleneck": ["factor"],
    "leaky_099": [],  # 0.99 is within --slope-tol but breaks the default float32 tolerance: reverted
    "no_fold_slope_05": [],
    "no_fold_shared": [],
}


def test_every_shipped_model_is_listed():
    assert sorted(p.stem for p in MODELS.glob("*.onnx")) == sorted(FOLDS)


def _run(model: onnx.ModelProto, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def _feed(model: onnx.ModelProto, batch: int = 7):
    rng = np.random.default_rng(123)
    feed = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in inp.type.tensor_type.shape.dim]
        feed[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


@pytest.mark.parametrize("name", sorted(FOLDS))
def test_shipped_model(name):
    path = MODELS / f"{name}.onnx"
    original_bytes = path.read_bytes()
    original = onnx.load(str(path))
    out, report = optimize(path)
    assert path.read_bytes() == original_bytes
    folded = report.folded
    assert [f.form for f in folded] == FOLDS[name]
    assert report.verification.passed
    onnx.checker.check_model(out, full_check=True)

    # the predicted savings are the real ones
    assert report.before.params - report.after.params == sum(f.params_before - f.params_after for f in folded)
    assert report.before.linear_macs - report.after.linear_macs == sum(f.macs_before - f.macs_after for f in folded)
    if folded:
        assert report.after.params < report.before.params
        assert report.after.linear_macs <= report.before.linear_macs
        assert len(out.SerializeToString()) < len(original.SerializeToString())
    else:
        assert out.SerializeToString() == original.SerializeToString()

    # the interface is kept: names, dtypes, shapes, opset, metadata
    assert [(i.name, i.type) for i in out.graph.input] == [(i.name, i.type) for i in original.graph.input]
    assert [(o.name, o.type) for o in out.graph.output] == [(o.name, o.type) for o in original.graph.output]
    assert list(out.opset_import) == list(original.opset_import)
    assert out.producer_name == original.producer_name and out.ir_version == original.ir_version

    # independent check on a batch size the verifier did not use
    feed = _feed(original)
    for a, b in zip(_run(original, feed), _run(out, feed)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


def test_near_one_slope_is_reverted_with_its_measured_error():
    _, report = optimize(MODELS / "leaky_099.onnx")
    (record,) = report.folds
    assert record.status == "reverted"
    assert record.error.max_abs > record.error.atol and f"{record.error.max_abs:.2e}" in record.reason


def test_near_one_slope_folds_under_a_looser_tolerance():
    _, report = optimize(MODELS / "leaky_099.onnx", atol=5e-2, rtol=5e-2)
    assert [f.status for f in report.folds] == ["folded"]
    assert 0 < report.verification.outputs[0].max_abs < 5e-2


def test_bottleneck_factor_pair_is_smaller_than_the_dense_fold_would_be():
    _, report = optimize(MODELS / "bottleneck.onnx")
    (record,) = report.folded
    assert record.rank == 24
    assert record.params_after < 256 * 256 and record.params_after < record.params_before
