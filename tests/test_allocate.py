"""ALDS allocation against brute force, the budget as counted, and grouped factors in onnxruntime."""

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_collapse import allocate
from onnx_collapse.emit import GemmEmission, MatMulEmission
from onnx_collapse.layout import Features


def _layers(seed, shapes, groups=1):
    rng = np.random.default_rng(seed)
    out = []
    for k, (n_in, n_out) in enumerate(shapes):
        # decaying spectra, different per layer, as in trained weights
        u, _ = np.linalg.qr(rng.standard_normal((n_in, n_in)))
        v, _ = np.linalg.qr(rng.standard_normal((n_out, n_out)))
        s = np.exp(-rng.uniform(0.1, 1.0) * np.arange(min(n_in, n_out)))
        w = (u[:, : s.size] * s) @ v[: s.size]
        out.append((allocate.spectrum(f"l{k}", w, max_groups=groups), w))
    return out


def _brute_force(layers, budget):
    limit = budget * sum(layer.dense.params for layer in layers)
    best = None
    for combo in itertools.product(*(layer.options for layer in layers)):
        if sum(o.params for o in combo) <= limit:
            worst = max(o.error for o in combo)
            best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [0.2, 0.35, 0.5, 0.8])
def test_allocation_minimises_max_error_like_brute_force(seed, budget):
    layers = [spec for spec, _ in _layers(seed, [(6, 8), (8, 5), (7, 7)])]
    chosen = allocate.allocate_budget(layers, budget)
    limit = budget * sum(layer.dense.params for layer in layers)
    expected = _brute_force(layers, budget)
    if expected is None:  # infeasible: the cheapest option everywhere, and the caller is told
        assert chosen == [min(layer.options, key=lambda o: o.params) for layer in layers]
        return
    assert allocate.total_cost(chosen) <= limit  # the budget is met exactly as counted
    assert max(o.error for o in chosen) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(3))
def test_grouped_options_join_the_same_minimax(seed):
    layers = [spec for spec, _ in _layers(seed, [(8, 8), (6, 9)], groups=2)]
    assert any(o.groups == 2 for layer in layers for o in layer.options)
    chosen = allocate.allocate_budget(layers, 0.5)
    assert max(o.error for o in chosen) == pytest.approx(_brute_force(layers, 0.5))


def test_max_error_gives_the_smallest_model_within_the_error():
    layers = [spec for spec, _ in _layers(1, [(16, 16), (16, 8)])]
    chosen = allocate.allocate_max_error(layers, 0.1)
    assert all(o.error <= 0.1 for o in chosen)
    for layer, option in zip(layers, chosen):
        assert all(o.params >= option.params for o in layer.options if o.error <= 0.1)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_alds_max_error_is_no_worse_than_uniform_or_energy(budget):
    pairs = _layers(7, [(32, 24), (24, 40), (40, 16)])
    layers = [p for p, _ in pairs]
    alds = max(o.error for o in allocate.allocate_budget(layers, budget))
    assert alds <= max(o.error for o in allocate.allocate_uniform(layers, budget)) + 1e-12
    assert alds <= max(o.error for o in allocate.allocate_energy(layers, budget)) + 1e-12


def test_predicted_spectral_error_is_the_measured_one():
    (spec, w), = _layers(3, [(12, 10)])
    option = spec.options[4]
    u, s, vt = np.linalg.svd(w)
    approx = (u[:, : option.rank] * s[: option.rank]) @ vt[: option.rank]
    assert np.linalg.norm(w - approx, 2) / np.linalg.norm(w, 2) == pytest.approx(option.error)


def _run_nodes(nodes, inits, x):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


@pytest.mark.parametrize("input_rank,use_gemm", [(2, True), (2, False), (3, False)])
def test_grouped_factors_run_in_onnxruntime_and_match_numpy(input_rank, use_gemm):
    rng = np.random.default_rng(0)
    k, width, j, n_out = 3, 4, 2, 5
    blocks = rng.standard_normal((k, width, j))
    second = rng.standard_normal((k * j, n_out))
    bias = rng.standard_normal(n_out)
    x = rng.standard_normal([2] * (input_rank - 1) + [k * width]).astype(np.float32)
    names = iter(range(100))
    emission = (GemmEmission if use_gemm else MatMulEmission)("p", 1, Features(input_rank))
    nodes, inits = emission.grouped(lambda b: f"{b}_{next(names)}", "x", "y", blocks, second, bias, np.float32)
    reference = np.concatenate([x[..., g * width:(g + 1) * width] @ blocks[g] for g in range(k)], axis=-1) @ second + bias
    np.testing.assert_allclose(_run_nodes(nodes, inits, x), reference, rtol=1e-5, atol=1e-5)


def test_factor_pair_at_full_rank_is_equivalent():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 9))
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    from onnx_collapse.linalg import factor_pair

    a, b = factor_pair(u, s, vt, 6)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    names = iter(range(100))
    nodes, inits = GemmEmission("p", 2, Features(2)).linear(lambda p: f"{p}_{next(names)}", "x", "y", [a, b], None,
                                                  np.float32)
    np.testing.assert_allclose(_run_nodes(nodes, inits, x), x @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_leftover_budget_lowers_other_errors_without_raising_the_largest(seed):
    layers = [spec for spec, _ in _layers(seed, [(16, 12), (12, 20), (20, 8), (10, 10)])]
    limit = 0.5 * sum(layer.dense.params for layer in layers)
    minimax = allocate.allocate_max_error(layers, max(o.error for o in allocate.allocate_budget(layers, 0.5)))
    chosen = allocate.allocate_budget(layers, 0.5)
    assert max(o.error for o in chosen) == pytest.approx(max(o.error for o in minimax))
    assert all(c.error <= m.error for c, m in zip(chosen, minimax))
    assert allocate.total_cost(minimax) <= allocate.total_cost(chosen) <= limit
