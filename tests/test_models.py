"""Every shipped model (exported by torch, see models/export.py): optimize, then check what a user cares about."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_collapse import analyze, optimize
from tests.common import MODELS

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
    # issue 10: what real exporters and pipelines produce (models/export.py, both exporters, onnxsim)
    "encoder_dynamo": ["dense"] * 3,  # LayerScale Mul after each block absorbed
    "encoder_torchscript": ["dense"] * 3,  # slopes shared through Identity nodes
    "encoder_dynamo_onnxsim": ["dense"] * 3,  # Reshape -> Gemm -> Reshape sandwiches
    "bn_mlp_dynamo": ["dense"],  # the exporter already merged the BatchNorm
    "bn_mlp_torchscript": ["dense"],  # BatchNormalization between the layers
    "bn_around_dynamo": ["dense"],
    "bn_around_torchscript": ["dense"],  # BatchNormalization before the first and after the last layer
    "flatten_mlp_dynamo": ["dense"],
    "flatten_mlp_torchscript": ["dense"],  # Flatten between the layers
    # issue 11: convolutions (one dense Conv each)
    "cnn_k3_1_1_dynamo": ["dense"],
    "cnn_k3_1_1_torchscript": ["dense"],  # Conv3x3 - PReLU - Conv1x1 - PReLU - Conv1x1
    "cnn_bn_dynamo": ["dense"],
    "cnn_bn_torchscript": ["dense"],  # Conv(stride 2) - BatchNorm - PReLU - Conv1x1 - ReLU
    "cnn_k1_k3_dynamo": ["dense"],
    "cnn_k1_k3_torchscript": ["dense"],  # Conv1x1 without bias - PReLU - padded Conv3x3
    "cnn_k3_k3_dynamo": ["dense"],
    "cnn_k3_k3_torchscript": ["dense"],  # two 3x3 into one 5x5 (smaller: the middle is wide)
}

# model -> op types that must be gone after the fold (all the torch model's chains folded)
GONE = {
    "encoder_dynamo": {"PRelu", "Mul"},
    "encoder_torchscript": {"PRelu", "Mul", "Identity"},
    "encoder_dynamo_onnxsim": {"PRelu", "Mul"},
    "bn_mlp_torchscript": {"BatchNormalization", "PRelu"},
    "bn_around_dynamo": {"BatchNormalization", "PRelu"},
    "bn_around_torchscript": {"BatchNormalization", "PRelu"},
    "flatten_mlp_torchscript": {"Flatten", "PRelu"},
    "cnn_bn_torchscript": {"BatchNormalization", "PRelu"},
    **{f"cnn_{k}_{e}": {"PRelu"} for k in ("k3_1_1", "k1_k3", "k3_k3") for e in ("dynamo", "torchscript")},
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

    assert not GONE.get(name, set()) & {n.op_type for n in out.graph.node}

    # the interface is kept: names, dtypes, shapes, opset, metadata
    assert [(i.name, i.type) for i in out.graph.input] == [(i.name, i.type) for i in original.graph.input]
    assert [(o.name, o.type) for o in out.graph.output] == [(o.name, o.type) for o in original.graph.output]
    assert list(out.opset_import) == list(original.opset_import)
    assert out.producer_name == original.producer_name and out.ir_version == original.ir_version

    # independent check on a batch size the verifier did not use
    feed = _feed(original)
    for a, b in zip(_run(original, feed), _run(out, feed)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(FOLDS))
def test_analyze_predicts_the_parameters_optimize_measures(name):
    predicted = analyze(MODELS / f"{name}.onnx").report.after
    _, report = optimize(MODELS / f"{name}.onnx")
    if all(f.status != "reverted" for f in report.folds):
        assert (predicted.params, predicted.linear_macs) == (report.after.params, report.after.linear_macs)


@pytest.mark.parametrize("base", ["encoder", "bn_mlp", "bn_around", "flatten_mlp", "cnn_k3_1_1", "cnn_bn", "cnn_k1_k3",
                                  "cnn_k3_k3"])
def test_both_exporters_fold_to_the_same_parameters(base):
    counts = {optimize(MODELS / f"{base}_{exporter}.onnx")[1].after.params for exporter in ("dynamo", "torchscript")}
    if base == "encoder":
        counts.add(optimize(MODELS / "encoder_dynamo_onnxsim.onnx")[1].after.params)
    assert len(counts) == 1


def test_dynamo_exports_are_labelled_by_module_path():
    _, report = optimize(MODELS / "encoder_dynamo.onnx")
    assert [f.layers for f in report.folds] == [[f"{k}.fc1", f"{k}.fc2"] for k in range(3)]


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


@pytest.mark.parametrize("name", ["encoder_dynamo_onnxsim", "encoder_dynamo", "bn_around_torchscript"])
def test_a_truncated_chain_keeps_the_shape_ops_at_its_edges(name, tmp_path):
    """onnxsim's Reshape -> Gemm -> Reshape -> Mul: a truncation (written even without verification) computes
    the same shapes as the model and stays close to it; it once dropped the trailing Reshape (a broken file)."""
    out = tmp_path / "out.onnx"
    _, report = optimize(MODELS / f"{name}.onnx", output=out, low_rank="all", rank_budget=0.5, verify=False)
    assert any(f.form == "truncated" for f in report.folds)
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    info = model.graph.input[0]
    dims = [d.dim_value or 2 for d in info.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    want = ort.InferenceSession(str(MODELS / f"{name}.onnx")).run(None, {info.name: x})[0]
    got = ort.InferenceSession(str(out)).run(None, {info.name: x})[0]
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) < np.linalg.norm(want)  # half the weights: near, not equal
