"""Channel selection algebra: each removal's cost is the exact rise of the least-squares error (brute force)."""

import numpy as np
import pytest

from onnx_collapse.calibrate import empty_moments
from onnx_collapse.channels import centred, columns, removal_order


def _data(seed=0, n=400, c=7, m=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c)) @ rng.normal(size=(c, c))
    x[:, 5] = x[:, 1] + 0.05 * rng.normal(size=n)  # a nearly redundant channel
    y = x @ rng.normal(size=(c, m)) + 0.1 * rng.normal(size=(n, m)) + 2.0
    return x, y


def _ls_error(x, y, kept):
    """Squared error per row of the best affine fit of y on x[:, kept] (brute force)."""
    xs = np.column_stack([x[:, kept], np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(xs, y, rcond=None)
    return float(np.sum((xs @ coef - y) ** 2)) / len(x)


def test_each_removal_is_the_cheapest_and_costs_what_brute_force_says():
    x, y = _data()
    m = empty_moments(x.shape[1], y.shape[1])
    m.add(x, y)
    cov, cross, _ = centred(m)
    kept, added = removal_order(cov, cross, 2, ridge=0.0)
    alive = list(range(x.shape[1]))
    for cost in added:
        base = _ls_error(x, y, alive)
        rises = {j: _ls_error(x, y, [k for k in alive if k != j]) - base for j in alive}
        best = min(rises, key=rises.get)
        assert cost == pytest.approx(rises[best], rel=1e-6, abs=1e-9)
        alive.remove(best)
    assert sorted(alive) == list(kept)


def test_the_redundant_channel_goes_first():
    x, y = _data(seed=3)
    m = empty_moments(x.shape[1], y.shape[1])
    m.add(x, y)
    kept, added = removal_order(*centred(m)[:2], x.shape[1] - 1)
    assert set(range(7)) - set(kept) <= {1, 5} and len(kept) == 6 and len(added) == 1


def test_keeping_everything_removes_nothing_and_bad_keep_is_refused():
    x, y = _data()
    m = empty_moments(x.shape[1], y.shape[1])
    m.add(x, y)
    cov, cross, _ = centred(m)
    kept, added = removal_order(cov, cross, 7)
    assert list(kept) == list(range(7)) and added.size == 0
    for keep in (0, 8):
        with pytest.raises(ValueError, match="keep"):
            removal_order(cov, cross, keep)


def test_centred_and_columns_agree_with_numpy():
    x, y = _data(n=50)
    m = empty_moments(x.shape[1], y.shape[1])
    m.add(x[:20], y[:20])
    m.add(x[20:], y[20:])
    cov, cross, var = centred(m)
    assert np.allclose(cov, np.cov(x.T, bias=True))
    assert np.allclose(cross, (x - x.mean(0)).T @ (y - y.mean(0)) / len(x))
    assert var == pytest.approx(float(np.sum(np.var(y, axis=0))))
    sub = columns(m, np.array([0, 4]))
    assert np.allclose(centred(sub)[0], np.cov(x[:, [0, 4]].T, bias=True))
