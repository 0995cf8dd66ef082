"""Spectra once: singular values only for every low-rank target, factors only for the chosen rank."""

import numpy as np
import pytest
from builders import ActSpec, ChainSpec, LayerSpec, build

import onnx_collapse as oc
from onnx_collapse import linalg


def _count(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def four_layers():
    """Four layers with nonlinear activations between them: four single low-rank targets."""
    return build(ChainSpec(16, [LayerSpec(24), LayerSpec(24), LayerSpec(24), LayerSpec(8)],
                           [ActSpec("prelu", 0.2)] * 3), seed=1)


def test_each_target_gets_its_spectrum_once_and_factors_only_at_its_rank(monkeypatch):
    values = _count(monkeypatch, linalg, "singular_values")
    factors = _count(monkeypatch, linalg, "top_factors")
    svds = _count(monkeypatch, np.linalg, "svd")
    _, report = oc.optimize(four_layers(), rank_budget=0.5, low_rank="all", verify=False)
    truncated = [f for f in report.folds if f.form == "truncated"]
    assert len(values) == 4
    assert len(factors) == len(truncated) >= 2
    # small layers: one values-only SVD per target, one SVD with vectors per truncated layer, nothing else
    assert sum(kw.get("compute_uv") is False for kw in svds) == 4
    assert len(svds) == 4 + len(truncated)


def test_a_collapsed_factor_pair_is_never_decomposed_again(monkeypatch):
    model = build(ChainSpec(64, [LayerSpec(6), LayerSpec(6), LayerSpec(64)], [ActSpec("prelu", 1.0)] * 2), seed=2)
    svds = _count(monkeypatch, np.linalg, "svd")
    _, report = oc.optimize(model, rank_budget=0.05, verify=False)
    (fold,) = report.folds
    assert fold.form == "truncated" and fold.rank < 6
    assert len(svds) == 1  # the exact fold's SVD; its singular values and factors are reused


def test_analyze_computes_spectra_only_when_asked(monkeypatch):
    values = _count(monkeypatch, linalg, "singular_values")
    oc.analyze(four_layers(), low_rank="all")
    assert values == []
    found = oc.analyze(four_layers(), low_rank="all", spectrum=True)
    assert len(values) == len(found.spectra) == 4


@pytest.mark.parametrize("shape", [(300, 420), (420, 300)])
def test_gram_spectra_and_factors_match_the_svd(shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape) * np.geomspace(1, 1e-3, shape[1])  # a decaying spectrum
    assert min(shape) >= linalg.GRAM_MIN_DIM
    exact = np.linalg.svd(w, compute_uv=False)
    s = linalg.singular_values(w.astype(np.float32))
    floor = linalg.gram_floor(min(shape)) * exact[0]
    assert np.abs(s - exact).max() <= floor
    for rank in (10, 150):
        a, b = linalg.top_factors(w, rank)
        assert a.shape == (shape[0], rank) and b.shape == (rank, shape[1])
        assert np.linalg.norm(w - a @ b, 2) == pytest.approx(exact[rank], rel=1e-6)


def test_gram_spectra_report_values_under_their_floor_as_zero():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 400))  # rank 5
    s = linalg.singular_values(w)
    assert np.count_nonzero(s) == 5 == linalg.numerical_rank(s, w.shape)


def test_low_rank_pass_uses_the_cached_spectrum_of_a_factor_pair():
    u, s, vt = linalg.svd(np.random.default_rng(3).standard_normal((20, 30)))
    pair = linalg.Factored(linalg.factor_pair(u, s, vt, 20), None, s)
    np.testing.assert_array_equal(linalg.singular_values(pair), s)
    a, b = linalg.top_factors(pair, 4)
    np.testing.assert_allclose(a @ b, (u[:, :4] * s[:4]) @ vt[:4], atol=1e-12)

