"""Calibrated compression: least-squares collapse, activation-aware truncation, streaming statistics,
held-out verification, and clean errors for bad calibration files."""

import shutil
import subprocess

import numpy as np
import onnx
import pytest

import onnx_collapse as oc
from onnx_collapse import calibrate, linalg
from onnx_collapse.errors import CollapseError
from onnx_collapse.io import ModelSource
from onnx_collapse.pipeline import calibration_split
from tests.builders import ActSpec, ChainSpec, LayerSpec, build, mlp, run_model, shifted_rows, two_chains

EXE = shutil.which("onnx-collapse")


# --- least-squares collapse -----------------------------------------------------------------------------------


def test_ridge_toward_the_plain_fold_keeps_unexcited_directions():
    rng = np.random.default_rng(0)
    n_in, n_out, k = 10, 4, 3
    basis = np.linalg.qr(rng.standard_normal((n_in, k)))[0]  # the data lives in a 3-D subspace
    x = rng.standard_normal((400, k)) @ basis.T + basis @ rng.standard_normal(k)
    truth = rng.standard_normal((n_in, n_out))
    y = np.tanh(x @ truth)  # anything the plain fold does not explain
    prior, prior_bias = rng.standard_normal((n_in, n_out)), rng.standard_normal(n_out)
    parts = []
    for rows in np.array_split(np.arange(400), 4):
        m = calibrate.empty_moments(n_in, n_out)
        m.add(x[rows], y[rows])
        parts.append(m)
    fit = calibrate.fit_chain(parts, prior, prior_bias)
    assert fit.weight is not None
    outside = np.eye(n_in) - basis @ basis.T
    np.testing.assert_allclose(outside @ fit.weight, outside @ prior, atol=1e-9)
    assert np.abs(basis.T @ (fit.weight - prior)).max() > 0.1  # inside the subspace it did move
    assert fit.fitted_rms < fit.plain_rms


def test_cross_validated_errors_come_from_the_sums_alone():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((50, 5)), rng.standard_normal((50, 3))
    m = calibrate.empty_moments(5, 3)
    m.add(x, y)
    w, b = rng.standard_normal((5, 3)), rng.standard_normal(3)
    assert calibrate.sse(m, w, b) == pytest.approx(np.sum((x @ w + b - y) ** 2), rel=1e-10)


# --- activation-aware truncation ------------------------------------------------------------------------------

def _moments(x: np.ndarray) -> calibrate.Moments:
    m = calibrate.empty_moments(x.shape[1])
    m.add(x)
    return m


def test_whitened_truncation_error_is_the_discarded_singular_values():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 20)) @ rng.standard_normal((20, 20)) + 3.0
    w, b = rng.standard_normal((20, 15)), rng.standard_normal(15)
    m = _moments(x)
    metric = linalg.whitening(m.count, m.sum_x, m.gram, damping=0.0)
    s = linalg.singular_values(linalg.whitened(w, metric))
    for rank in (1, 5, 12):
        a, f, bias = linalg.truncate(linalg.Factored((w,), b), rank, metric)
        err = (x @ a @ f + bias) - (x @ w + b)
        assert np.sum(err**2) / len(x) == pytest.approx(np.sum(s[rank:] ** 2), rel=1e-8)
        # the data-free truncation of the same rank does worse on this data
        a0, f0 = linalg.top_factors(w, rank)
        assert np.sum((x @ a0 @ f0 - x @ w) ** 2) > np.sum(err**2)


def test_whitened_truncation_in_onnxruntime_matches_the_predicted_error(monkeypatch):
    monkeypatch.setattr(linalg, "WHITEN_DAMPING", 0.0)
    model = build(ChainSpec(32, [LayerSpec(24)]), seed=4)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((400, 32)) @ rng.standard_normal((32, 32)) * 0.3 + 1.0).astype(np.float32)
    out, report = oc.optimize(model, calibrate={"x": x}, rank_budget=0.5, low_rank="all",
                              error_metric="frobenius", verify=False)
    (fold,) = report.folds
    assert fold.form == "truncated" and "activation-aware" in fold.reason
    y, y_cut = run_model(model, x=x)[0], run_model(out, x=x)[0]
    measured = np.linalg.norm(y_cut - y) / np.linalg.norm(y - y.mean(axis=0))
    assert measured == pytest.approx(fold.predicted_error, rel=1e-3)


def test_activation_aware_alds_loses_less_output_on_the_data_than_data_free():
    model = build(ChainSpec(32, [LayerSpec(32), LayerSpec(32)], [ActSpec("prelu", 0.3)]), seed=6)
    rng = np.random.default_rng(7)
    mix = rng.standard_normal((32, 32)) * np.geomspace(1, 1e-2, 32)[:, None]
    x = (rng.standard_normal((800, 32)) @ mix).astype(np.float32)
    y = run_model(model, x=x[600:])[0]
    errors = {}
    for name, data in (("free", None), ("aware", {"x": x[:600]})):
        out, _ = oc.optimize(model, calibrate=data, rank_budget=0.4, low_rank="all", verify=False)
        errors[name] = np.linalg.norm(run_model(out, x=x[600:])[0] - y)
    assert errors["aware"] < errors["free"] / 2


# --- statistics, splits, errors -------------------------------------------------------------------------------

def test_streaming_statistics_equal_the_all_at_once_statistics(monkeypatch):
    model = build(ChainSpec(6, [LayerSpec(8, op="matmul"), LayerSpec(5, op="matmul")], [ActSpec("prelu", 0.97)],
                            input_rank=3), seed=8)
    x = np.random.default_rng(9).standard_normal((37, 3, 6)).astype(np.float32)
    request = calibrate.Request("x", 6, "l1", 5)
    elem = {"x": onnx.TensorProto.FLOAT, "l1": onnx.TensorProto.FLOAT}
    monkeypatch.setattr(calibrate, "BATCH_BYTES", 200)  # a few rows per batch
    streamed = calibrate.collect(ModelSource(model), [request], elem, {"x": x}, folds=3, seed=0)
    assert streamed.batches > 6 and streamed.rows == 37
    whole = calibrate.total(streamed.parts[request])
    rows, out = x.reshape(-1, 6).astype(np.float64), run_model(model, x=x)[0].reshape(-1, 5).astype(np.float64)
    assert whole.count == 37 * 3
    np.testing.assert_allclose(whole.gram, rows.T @ rows, rtol=1e-12)
    np.testing.assert_allclose(whole.sum_x, rows.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(whole.cross, rows.T @ out, rtol=1e-6, atol=1e-6)
    assert whole.sum_yy == pytest.approx(np.sum(out**2), rel=1e-6)
    assert sorted(p.count for p in streamed.parts[request]) == [36, 36, 39]  # disjoint folds, every row once


def test_calibration_and_verification_rows_are_disjoint_and_the_report_says_so():
    model = two_chains(0.97)
    x = shifted_rows(50, 12, 0)
    x[:, 0] = np.arange(50)  # tag the rows
    options, phrase = calibration_split(model, oc.Options(calibrate={"x": x}))
    kept, held = options.calibrate["x"][:, 0], options.inputs["x"][:, 0]
    assert set(kept).isdisjoint(held) and sorted([*kept, *held]) == list(range(50)) and len(held) == 10
    _, report = oc.optimize(model, calibrate={"x": x}, atol=1.0)
    assert report.verification.inputs == phrase
    assert "10 of 50 rows" in phrase and "held out" in phrase and "other 40 calibrated" in phrase


def test_given_inputs_verify_and_the_same_file_for_both_is_refused(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=shifted_rows(20, 12, 0))
    with pytest.raises(CollapseError, match="same file"):
        oc.optimize(two_chains(0.97), calibrate=str(path), inputs=str(path))


@pytest.mark.skipif(EXE is None, reason="console script not installed")
@pytest.mark.parametrize("content,words", [
    (None, ["--calibrate", "cannot read"]),
    (b"not an npz", ["--calibrate", "is not an .npz archive", "np.savez(path, x=array)"]),
    ({"y": np.zeros((4, 8), np.float32)}, ["no array for input 'x'"]),
    ({"x": np.zeros((4, 8), np.float32), "z": np.zeros(4)}, ["'z'", "not a model input"]),
    ({"x": np.zeros((1, 8), np.float32)}, ["1 row(s)", "at least 2"]),
    ({"x": np.zeros((4, 9), np.float32)}, ["--calibrate", "has shape 4x9", "the model expects x: float32"]),
])
@pytest.mark.slow
def test_bad_calibration_files_are_one_line_errors(tmp_path, content, words):
    src, path = tmp_path / "in.onnx", tmp_path / "cal.npz"
    onnx.save(mlp(slope=0.98), src)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.savez(path, **content)
    result = subprocess.run([EXE, "optimize", str(src), str(tmp_path / "o.onnx"), "--calibrate", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "o.onnx").exists()
