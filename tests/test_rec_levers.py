"""The pure parts of benchmarks/rec_levers.py: the KL ladder measure and the downstream refit's algebra."""

import numpy as np
import rec_levers


def test_kl_change_is_zero_for_the_same_probabilities_and_the_mean_kl_otherwise():
    p = np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]])
    q = np.array([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]])
    assert rec_levers.kl_change([{"y": p}], [{"y": p}]) == 0.0
    want = np.mean(np.sum(p * np.log(p / q), axis=-1))
    np.testing.assert_allclose(rec_levers.kl_change([{"y": p}], [{"y": q}]), want, rtol=1e-12)
    assert rec_levers.kl_change([{"y": p}], [{"y": q * np.nan}]) == float("inf")


def test_the_refit_from_sums_is_the_ridge_solution_and_its_error_the_direct_one():
    rng = np.random.default_rng(0)
    x, w0 = rng.standard_normal((200, 5)), rng.standard_normal((5, 3))
    y = x @ w0 + 0.3 + 0.01 * rng.standard_normal((200, 3))
    sums = rec_levers._sums(x, y)
    w, b = rec_levers._fit(sums, np.zeros((5, 3)), 1e-9, intercept=True)
    np.testing.assert_allclose(w, w0, atol=0.01)
    np.testing.assert_allclose(rec_levers._sse(sums, w, b), np.sum((x @ w + b - y) ** 2), rtol=1e-8)
    far, _ = rec_levers._fit(sums, np.zeros((5, 3)), 1e6, intercept=True)  # a strong ridge stays at the prior
    assert np.abs(far).max() < 1e-3
