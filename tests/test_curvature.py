"""Softmax-weighed truncation: the curvature sums, which softmaxes count, the weighed algebra, and a classifier
whose head keeps the classes its data reads."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_collapse import curvature, linalg, optimize, sequential
from onnx_collapse.curvature import ClassCurvature, SoftmaxRead


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_curvature_sums_are_p_times_one_minus_p_per_class():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 5, 7)) * 3
    curv = ClassCurvature(SoftmaxRead("z", -1, -1, False))
    assert curv.add(z[:2]) and curv.add(z[2:])
    p = _softmax(z, -1).reshape(-1, 7)
    np.testing.assert_allclose(curv.sums / curv.rows, (p * (1 - p)).mean(0), rtol=1e-12)
    assert curv.rows == 15


def test_curvature_of_convolution_logits_reads_the_channels():
    z = np.random.default_rng(1).standard_normal((2, 4, 3, 3))
    curv = ClassCurvature(SoftmaxRead("z", 1, 1, False))
    assert curv.add(z)
    p = np.moveaxis(_softmax(z, 1), 1, -1).reshape(-1, 4)
    np.testing.assert_allclose(curv.sums / curv.rows, (p * (1 - p)).mean(0), rtol=1e-12)


@pytest.mark.parametrize("read, ndim, over", [
    (SoftmaxRead("z", -1, -1, False), 3, True),
    (SoftmaxRead("z", -1, 2, False), 3, True),
    (SoftmaxRead("z", -1, 1, False), 3, False),  # over the time steps, not the classes
    (SoftmaxRead("z", 1, 1, False), 4, True),
    (SoftmaxRead("z", -1, 1, True), 2, True),  # opset < 13: over every axis from 1 on, here the classes
    (SoftmaxRead("z", -1, 1, True), 3, False),  # ... here time steps and classes together
    (SoftmaxRead("z", -1, 2, True), 3, True),
    (SoftmaxRead("z", 1, 1, True), 4, False),
])
def test_only_a_softmax_over_the_features_alone_counts(read, ndim, over):
    assert read.over_features(ndim) is over
    assert ClassCurvature(read).add(np.zeros((2,) * ndim)) is over


def test_scales_have_mean_weight_one_and_a_floor():
    curv = ClassCurvature(SoftmaxRead("z", -1, -1, False), rows=4, sums=np.array([4.0, 2.0, 0.0, 0.0]))
    scale = curv.output_scale()
    assert np.mean(scale ** 2) == pytest.approx(1.0)
    w = scale ** 2
    assert w[2] == w[3] > 0 and w[2] / w.mean() >= curvature.FLOOR * 0.99
    assert w[0] / w[1] == pytest.approx(2.0)
    assert ClassCurvature(SoftmaxRead("z", -1, -1, False), rows=3, sums=np.zeros(4)).output_scale() is None


def _problem(seed=0, n=300, n_in=10, n_out=8):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_in)) @ rng.standard_normal((n_in, n_in))
    w, bias = rng.standard_normal((n_in, n_out)), rng.standard_normal(n_out)
    scale = np.exp(rng.standard_normal(n_out))
    return x, w, bias, scale


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_weighed_truncation_drops_exactly_the_weighed_singular_values(rank):
    """Eckart-Young in the weighed metric: the error ||root (W - A B) diag(s)||^2 is the sum of the squared
    singular values of root W diag(s) it drops, and no unweighed truncation does better in that metric."""
    x, w, bias, scale = _problem(rank)
    metric = linalg.whitening(x.shape[0], x.sum(0), x.T @ x).weighing_outputs(scale)
    a, b, kept_bias = linalg.truncate(linalg.Factored((w,), bias), rank, metric)
    err = lambda ab: float(np.sum((metric.root @ (w - ab) @ np.diag(scale)) ** 2))  # noqa: E731
    s = np.linalg.svd(metric.root @ w @ np.diag(scale), compute_uv=False)
    assert err(a @ b) == pytest.approx(float(np.sum(s[rank:] ** 2)), rel=1e-9)
    plain = linalg.truncate(linalg.Factored((w,), bias), rank, metric.weighing_outputs(None))
    assert err(a @ b) <= err(plain[0] @ plain[1]) * (1 + 1e-12)
    # the bias keeps the mean output, and nested slices give the same factors
    mean = x.mean(0)
    np.testing.assert_allclose(mean @ a @ b + kept_bias, mean @ w + bias, atol=1e-9)
    nested = linalg.nested_truncations(linalg.Factored((w,), bias), 6, metric)(rank)
    np.testing.assert_allclose(nested[0] @ nested[1], a @ b, atol=1e-9)


def test_weighed_sequential_refit_is_the_best_rank_r_fit_of_the_weighed_outputs():
    """The refit with output scales, against alternating least squares on the weighed ridge objective at the
    strength it chose."""
    x, w, bias, scale = _problem(7, n=400)
    rng = np.random.default_rng(7)
    x_tilde = x @ (np.eye(10) + 0.2 * rng.standard_normal((10, 10)))
    rank = 3
    pairs = [(b, [(x_tilde[rows], x[rows])]) for b, rows in enumerate(np.array_split(np.arange(400), 8))]
    parts = sequential.statistics(pairs, w, bias, output=scale)
    metric = linalg.whitening(x.shape[0], x.sum(0), x.T @ x).weighing_outputs(scale)
    one_pass = linalg.truncate(linalg.Factored((w,), bias), rank, metric)
    found = sequential.refit(parts, w, bias, rank, one_pass, scale)
    assert found is not None and found.weighed  # its RMS errors are of the weighed outputs, and say so
    y = x @ w + bias
    xc, yc = x_tilde - x_tilde.mean(0), (y - y.mean(0)) * scale
    lam = found.alpha * float(np.trace(xc.T @ xc)) / xc.shape[1]
    z = np.vstack([xc, np.sqrt(lam) * np.eye(10)])
    t = np.vstack([yc, np.sqrt(lam) * w * scale])
    best = np.inf
    for _ in range(4):
        bb = rng.standard_normal((rank, 8))
        for _ in range(300):
            aa = np.linalg.lstsq(z, t @ np.linalg.pinv(bb), rcond=None)[0]
            bb = np.linalg.lstsq(z @ aa, t, rcond=None)[0]
        best = min(best, float(np.sum((z @ aa @ bb - t) ** 2)))
    got = float(np.sum((z @ (found.a @ found.b * scale) - t) ** 2))
    assert best * (1 - 1e-4) <= got <= best * (1 + 1e-6)
    # the factors come back in the layer's own outputs: the mean output is the original one
    np.testing.assert_allclose((x_tilde @ found.a @ found.b + found.bias).mean(0), y.mean(0), atol=1e-8)


# --- a classifier: few classes its data reads, many it never makes probable but whose logits vary most ---

N_IN, N_CLASSES, READ = 24, 120, 5


def _classifier(op: str = "Softmax", logits_out: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = np.zeros((N_IN, N_CLASSES))
    w[12:15, :READ] = rng.standard_normal((3, READ))  # the classes read: inputs 12..14, modest weights
    w[:12, READ:] = 5 * rng.standard_normal((12, N_CLASSES - READ))  # never probable, but large logits
    b = np.concatenate([np.zeros(READ), np.full(N_CLASSES - READ, -200.0)])
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"], name="head"),
             helper.make_node(op, ["z"], ["p"], name="softmax", axis=1)]
    outputs = [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", N_CLASSES])]
    if logits_out:
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", N_CLASSES]))
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", N_IN])],
                              outputs, [numpy_helper.from_array(w.astype(np.float32), "w"),
                                        numpy_helper.from_array(b.astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, N_IN)).astype(np.float32)


def _agreement(original: onnx.ModelProto, compressed: onnx.ModelProto, x: np.ndarray) -> float:
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        ["p"], {"x": x})[0]
    return float(np.mean(run(original).argmax(1) == run(compressed).argmax(1)))


def _compress(model, monkeypatch=None, floor=None):
    if floor is not None:
        monkeypatch.setattr(curvature, "FLOOR", floor)
    return optimize(model, low_rank="all", rank_budget=0.15, calibrate={"x": _rows(256, 1)}, verify=False)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_a_head_read_by_a_softmax_keeps_the_classes_its_data_reads(op, monkeypatch):
    model = _classifier(op)
    held_out = _rows(400, 2)
    weighed, report = _compress(model)
    assert any("softmax's curvature" in n for n in report.notes)
    alike, _ = _compress(model, monkeypatch, floor=1e9)  # every class weighs the same
    rank = lambda m: min(numpy_helper.to_array(t).shape[0] for t in m.graph.initializer  # noqa: E731
                         if numpy_helper.to_array(t).ndim == 2)
    assert rank(weighed) == rank(alike) == 3  # the same budget, the same rank
    assert _agreement(model, weighed, held_out) >= 0.95
    assert _agreement(model, alike, held_out) <= 0.6


def test_logits_the_model_also_outputs_are_not_weighed():
    _, report = _compress(_classifier(logits_out=True))
    assert not any("softmax" in n for n in report.notes)


def test_logits_that_overflow_leave_every_class_alike():
    """Calibration rows that drive the logits to inf give no curvature, a note that says so, and a run that
    finishes."""
    model = _classifier()
    rows = _rows(64, 5)
    rows[:, 12:15] *= 1e37  # the read classes' logits overflow float32
    out, report = optimize(model, low_rank="all", rank_budget=0.15, calibrate={"x": rows}, verify=False)
    assert any("all classes weigh alike" in n for n in report.notes)
    assert not any("softmax's curvature" in n for n in report.notes)
    onnx.checker.check_model(out)
