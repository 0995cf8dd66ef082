"""Sequential fitting: the closed-form update against brute force, the graph cut, and a run on shipped models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from golden import calibration_rows

from onnx_collapse import CollapseError, calibrate, linalg, optimize, sequential
from onnx_collapse.layout import Windows

MODELS = Path(__file__).resolve().parents[1] / "models"


def _moments(x_tilde: np.ndarray, y: np.ndarray, parts: int = 1) -> list[calibrate.Moments]:
    out = []
    for rows in np.array_split(np.arange(x_tilde.shape[0]), parts):
        m = calibrate.empty_moments(x_tilde.shape[1], y.shape[1])
        m.add(x_tilde[rows], y[rows])
        out.append(m)
    return out


def _objective(x_tilde, y, w, prior, lam, a, b, bias):
    """||X~ A B + bias - Y||^2 + lam ||A B - prior||^2."""
    ab = a @ b
    return float(np.sum((x_tilde @ ab + bias - y) ** 2) + lam * np.sum((ab - prior) ** 2))


def _problem(seed: int = 0, n: int = 200, n_in: int = 12, n_out: int = 9, moved: float = 0.06):
    """Original inputs ``x``, the compressed model's ``x_tilde`` (mixed by ``moved``, as truncations upstream
    move them), a layer ``w``, ``bias`` and its original outputs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_in)) @ rng.standard_normal((n_in, n_in)) + rng.standard_normal(n_in)
    x_tilde = x @ (np.eye(n_in) + moved * rng.standard_normal((n_in, n_in))) + 0.05 * rng.standard_normal((n, n_in))
    w, bias = rng.standard_normal((n_in, n_out)), rng.standard_normal(n_out)
    return x, x_tilde, w, bias, x @ w + bias


def _lam(x_tilde: np.ndarray, alpha: float) -> float:
    centered = x_tilde - x_tilde.mean(axis=0)
    return alpha * float(np.trace(centered.T @ centered)) / x_tilde.shape[1]


def test_full_rank_update_is_the_ridge_least_squares_solution():
    x, x_tilde, w, bias, y = _problem()
    alpha = 1e-2
    (m,) = _moments(x_tilde, y)
    a, b, b_new = sequential.refit_factors(m, w, bias, rank=w.shape[0], alpha=alpha)
    lam = _lam(x_tilde, alpha)
    # brute force: the augmented least-squares system, the intercept unpenalised (centred data)
    xc, yc = x_tilde - x_tilde.mean(0), y - y.mean(0)
    design = np.vstack([xc, np.sqrt(lam) * np.eye(w.shape[0])])
    target = np.vstack([yc, np.sqrt(lam) * w])
    want = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(a @ b, want, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b_new, y.mean(0) - x_tilde.mean(0) @ want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_rank_limited_update_is_the_best_rank_r_fit(rank):
    """No rank-r map does better on the ridge objective: alternating least squares from many starts agrees."""
    x, x_tilde, w, bias, y = _problem(seed=rank)
    alpha = 1e-3
    (m,) = _moments(x_tilde, y)
    a, b, b_new = sequential.refit_factors(m, w, bias, rank, alpha)
    lam = _lam(x_tilde, alpha)
    xc, yc = x_tilde - x_tilde.mean(0), y - y.mean(0)
    z = np.vstack([xc, np.sqrt(lam) * np.eye(w.shape[0])])
    t = np.vstack([yc, np.sqrt(lam) * w])
    best = np.inf
    rng = np.random.default_rng(0)
    for _ in range(5):  # brute force: ALS on ||Z A B - T|| from random starts
        bb = rng.standard_normal((rank, w.shape[1]))
        for _ in range(300):
            aa = np.linalg.lstsq(z, t @ np.linalg.pinv(bb), rcond=None)[0]
            bb = np.linalg.lstsq(z @ aa, t, rcond=None)[0]
        best = min(best, float(np.sum((z @ aa @ bb - t) ** 2)))
    got = float(np.sum((z @ (a @ b) - t) ** 2))
    assert got <= best * (1 + 1e-6)
    assert got >= best * (1 - 1e-4)  # the same optimum, not a lucky other one
    # the bias is re-centred: the mean output on the fitted rows is the original mean output
    np.testing.assert_allclose((x_tilde @ a @ b + b_new).mean(0), y.mean(0), atol=1e-9)


def test_refit_beats_the_one_pass_factors_on_held_out_parts_when_inputs_moved():
    x, x_tilde, w, bias, y = _problem(seed=3, n=400, moved=0.3)
    rank = 6
    whiten = linalg.whitening(x.shape[0], x.sum(0), x.T @ x)
    one_pass = linalg.truncate(linalg.Factored((w,), bias), rank, whiten)
    found = sequential.refit(_moments(x_tilde, y, parts=4), w, bias, rank, one_pass)
    assert found is not None and found.refit_rms < found.one_pass_rms and not found.weighed
    err = lambda a, b, c: np.sqrt(np.mean((x_tilde @ a @ b + c - y) ** 2))  # noqa: E731
    assert err(found.a, found.b, found.bias) < err(*one_pass)


def test_refit_declines_with_a_single_part():
    x, x_tilde, w, bias, y = _problem()
    one_pass = linalg.truncate(linalg.Factored((w,), bias), 3)
    assert sequential.refit(_moments(x_tilde, y, parts=1), w, bias, 3, one_pass) is None


def test_row_pairs_of_a_convolution_line_up_window_for_window():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5))
    geometry = Windows((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    pairs = list(sequential.row_pairs(x * 2, x, 27, geometry))
    assert pairs and all(np.allclose(a, 2 * b) for a, b in pairs)
    assert sum(a.shape[0] for a, _ in pairs) == 2 * 6 * 5
    assert list(sequential.row_pairs(x[:, :2], x[:, :2], 27, geometry)) == []  # not this layer's input


def test_upstream_runs_only_the_nodes_after_the_cached_tensors():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 4] x) => (float[2, 4] y) <float[4, 4] w = {1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0,
                                                                 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 4.0}> {
            a = Relu(x)
            b = MatMul(a, w)
            c = Neg(b)
            y = Add(c, x)
        }""")
    part = sequential.upstream(model, {"c": onnx.TensorProto.FLOAT}, {"a": onnx.TensorProto.FLOAT})
    assert [n.op_type for n in part.graph.node] == ["MatMul", "Neg"]
    assert [i.name for i in part.graph.input] == ["a"]
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    (c,) = ort.InferenceSession(part.SerializeToString()).run(["c"], {"a": a})
    np.testing.assert_allclose(c, -(a * np.array([1, 2, 3, 4], dtype=np.float32)))
    whole = sequential.upstream(model, {"y": onnx.TensorProto.FLOAT}, {"b": onnx.TensorProto.FLOAT})
    assert sorted(i.name for i in whole.graph.input) == ["b", "x"]  # the skip connection still needs x


@pytest.mark.parametrize("name", ["encoder_dynamo", "encoder_dynamo_onnxsim"])
def test_sequential_run_is_verified_and_no_further_from_the_original(name, tmp_path):
    """Three truncated blocks in a row: the later ones are refitted to the inputs the earlier truncations give
    them; the whole model moves less from the original than with one-pass truncations."""
    path = MODELS / f"{name}.onnx"
    rows = calibration_rows(onnx.load(str(path)), n=96)
    loose = {"atol": 10.0, "rtol": 10.0, "low_rank": "all", "rank_budget": 0.5, "calibrate": rows}
    _, one_pass = optimize(str(path), **loose)
    _, report = optimize(str(path), output=str(tmp_path / "out.onnx"), sequential=True, **loose)
    assert report.verification.passed and (tmp_path / "out.onnx").exists()
    refitted = [f for f in report.folds if "sequential fit" in f.reason]
    assert refitted and all(f.form == "truncated" for f in refitted)
    assert any("sequential fitting" in n for n in report.notes)
    assert report.verification.outputs[0].mean_abs < one_pass.verification.outputs[0].mean_abs


def test_sequential_needs_calibration_data():
    with pytest.raises(CollapseError, match="sequential .*calibrate"):
        optimize(str(MODELS / "encoder_dynamo.onnx"), low_rank="all", rank_budget=0.5, sequential=True)


def test_the_ridge_path_equals_a_solve_per_strength():
    x, x_tilde, w, bias, y = _problem(seed=5)
    (m,) = _moments(x_tilde, y)
    alphas = (1e-4, 1e-2, 1.0)
    for alpha, (weight, b) in zip(alphas, sequential.ridge_path(m, w, alphas, True)):
        want_w, want_b = calibrate.fit_toward(m, w, alpha, True)
        np.testing.assert_allclose(weight, want_w, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(b, want_b, rtol=1e-7, atol=1e-9)
    (weight, b), = sequential.ridge_path(m, w, (1e-3,), False)
    np.testing.assert_allclose(weight, calibrate.fit_toward(m, w, 1e-3, False)[0], rtol=1e-7, atol=1e-9)
    assert b is None


def test_the_budget_search_judges_the_refitted_model_it_writes():
    """With sequential fitting, each budget the search tries is refitted before it is run, so the verdict at
    the budget it settles on is that of the model written."""
    path = MODELS / "encoder_dynamo.onnx"
    rows = calibration_rows(onnx.load(str(path)), n=96)
    _, report = optimize(str(path), low_rank="all", rank_budget="auto", calibrate=rows, sequential=True,
                         atol=1.0, rtol=0.0)
    assert report.verification.passed and report.after.params < report.before.params
    budget = float(next(n for n in report.notes if n.startswith("rank budget ")).split()[2])
    search = next(n for n in report.notes if n.startswith("budget search")).split(": ", 1)[1]
    tried = {float(b): v for b, v in (entry.split(": ", 1) for entry in search.split("; "))}
    assert "failed" in search and budget < 1
    verdict = tried[min(tried, key=lambda b: abs(b - budget))]  # the frontier shows 3 digits
    assert verdict == f"max abs {report.verification.outputs[0].max_abs:.2g} passed"
    assert sum(n.startswith("sequential fitting:") for n in report.notes) == 1  # the chosen budget's, once
    assert any("sequential fit" in f.reason for f in report.folds if f.status == "folded")


def test_a_budget_search_that_nothing_passes_keeps_every_layer_dense():
    path = MODELS / "encoder_dynamo.onnx"
    rows = calibration_rows(onnx.load(str(path)), n=96)
    _, report = optimize(str(path), low_rank="all", rank_budget="auto", calibrate=rows, sequential=True,
                         atol=1e-9, rtol=0.0)
    assert any(n.startswith("no budget tried passed") for n in report.notes)
    assert not any(n.startswith("sequential fitting:") for n in report.notes)  # no trial's refit is reported
    assert not [f for f in report.folds if f.status == "folded" and f.form in ("truncated", "grouped")]
    assert report.verification.passed and report.after.params == report.before.params
