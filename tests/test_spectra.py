"""Spectra once: singular values only for every low-rank target, factors only for the chosen rank."""

import numpy as np
import pytest

import onnx_collapse as oc
from onnx_collapse import linalg
from tests.builders import ActSpec, ChainSpec, LayerSpec, build


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


@pytest.mark.slow
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


@pytest.mark.slow
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



def _symmetric(n: int, values: np.ndarray, seed: int = 0) -> np.ndarray:
    q = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]
    return (q * values) @ q.T


@pytest.mark.slow
@pytest.mark.parametrize("full", [True, False])  # the full decomposition (small n) and the subset solver
def test_top_eigenvectors_are_the_leading_eigenvectors_largest_first(monkeypatch, full):
    monkeypatch.setattr(linalg, "FULL_EIGEN_WORKSPACE", 2**40 if full else 0)
    n = 300
    values = np.geomspace(1e3, 1e-3, n)
    g = _symmetric(n, values)
    exact = np.linalg.eigh(g)[1][:, ::-1]
    for count in (1, 37, n):
        vec = linalg.top_eigenvectors(g.copy(), count)
        assert vec.shape == (n, count)
        np.testing.assert_allclose(np.abs(np.sum(vec * exact[:, :count], axis=0)), 1.0, atol=1e-9)  # up to sign
    assert linalg.top_eigenvectors(g.copy(), 0).shape == (n, 0)


@pytest.mark.slow
@pytest.mark.parametrize("full", [True, False])
def test_top_eigenvectors_of_a_repeated_eigenvalue_span_its_space(monkeypatch, full):
    """A cluster across the cut: any orthonormal basis of the top space keeps the same energy."""
    monkeypatch.setattr(linalg, "FULL_EIGEN_WORKSPACE", 2**40 if full else 0)
    n, count = 200, 50
    values = np.concatenate([np.full(60, 5.0), np.linspace(1, 0, n - 60)])  # 60 equal values, cut at 50
    g = _symmetric(n, values, seed=1)
    vec = linalg.top_eigenvectors(g.copy(), count)
    np.testing.assert_allclose(vec.T @ vec, np.eye(count), atol=1e-10)
    np.testing.assert_allclose(np.trace(vec.T @ g @ vec), 5.0 * count, rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(300, 700), (700, 300)])
@pytest.mark.parametrize("layout", ["array", "file", "file transposed"])
@pytest.mark.parametrize("chunk", [2**16, 2**24])  # many slices (strided ones for a transposed file), or one
def test_gram_is_the_float64_product_on_the_narrower_side(tmp_path, shape, layout, monkeypatch, chunk):
    monkeypatch.setattr(linalg, "CHUNK_BYTES", chunk)
    w = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    if layout == "array":
        weight = w
    else:
        stored = w if layout == "file" else np.ascontiguousarray(w.T)
        stored.tofile(tmp_path / "w.bin")
        weight = np.memmap(tmp_path / "w.bin", np.float32, "r", 0, stored.shape)
        weight = weight if layout == "file" else weight.T
    g, rows = linalg.gram(weight)
    w64 = w.astype(np.float64)
    assert rows == (shape[0] <= shape[1])
    np.testing.assert_allclose(g, w64 @ w64.T if rows else w64.T @ w64, rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(g, g.T)


@pytest.mark.slow
@pytest.mark.parametrize("width", [24, 300])  # a small layer's SVD, a wide layer's Gram matrix
def test_a_layer_with_non_finite_weights_is_no_low_rank_target_and_the_others_still_are(width):
    from onnx import numpy_helper

    model = build(ChainSpec(width, [LayerSpec(width), LayerSpec(width)], [ActSpec("prelu", 0.2)]), seed=3)
    weight = next(t for t in model.graph.initializer if len(t.dims) == 2)
    values = numpy_helper.to_array(weight).copy()
    values[3, 5] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    _, report = oc.optimize(model, rank_budget=0.5, low_rank="all", verify=False)
    assert any("no low-rank form" in n and "not all finite" in n for n in report.notes), report.notes
    assert [f.form for f in report.folds if f.form == "truncated"] == ["truncated"]


@pytest.mark.slow
def test_a_subset_eigensolver_that_falls_short_is_replaced_by_the_full_one(monkeypatch):
    """scipy returns what LAPACK's syevr found without an error; fewer vectors must not mean a lower rank."""
    import scipy.linalg

    real = scipy.linalg.eigh

    def short(*args, **kwargs):
        values, vectors = real(*args, **kwargs)
        return (values[1:], vectors[:, 1:]) if kwargs.get("driver") == "evr" else (values, vectors)

    monkeypatch.setattr(scipy.linalg, "eigh", short)
    monkeypatch.setattr(linalg, "FULL_EIGEN_WORKSPACE", 0)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 420)) * np.geomspace(1, 1e-3, 420)
    with pytest.raises(np.linalg.LinAlgError, match="19 of 20"):
        linalg.top_eigenvectors(linalg.gram(w)[0], 20)
    a, b = linalg.top_factors(w, 20)
    assert a.shape == (300, 20) and b.shape == (20, 420)
    exact = np.linalg.svd(w, compute_uv=False)
    assert np.linalg.norm(w - a @ b, 2) == pytest.approx(exact[20], rel=1e-6)
