"""Output-aware allocation: the knapsack equals brute force, the ladder predicts sensibly, and on a real
(tiny) model the allocator spends the budget where the output is least sensitive."""

import itertools

import numpy as np
import onnx.parser
import pytest
from onnx import numpy_helper

from onnx_collapse import optimize
from onnx_collapse.allocate import LayerSpectrum, Option, allocate_min_total, total_cost
from onnx_collapse.errors import CollapseError
from onnx_collapse.sensitivity import Ladder, ladder_options, output_change
from tests.builders import decaying_classifier


def _layer(name, costs, errors):
    options = tuple(Option(None if k == 0 else k, 1, c, c, e) for k, (c, e) in enumerate(zip(costs, errors)))
    return LayerSpectrum(name, 4, 4, options, np.ones(3))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("budget", [0.3, 0.55, 0.8])
def test_min_total_equals_brute_force(seed, budget):
    rng = np.random.default_rng(seed)
    layers, changes = [], []
    for k in range(3):
        dense = int(rng.integers(20, 60))
        costs = [dense] + sorted(rng.integers(1, dense, size=3).tolist(), reverse=True)
        change = [0.0] + sorted(rng.random(3).tolist())
        layers.append(_layer(f"l{k}", costs, [0.0, 0.1, 0.2, 0.3]))
        changes.append(change)
    limit = budget * sum(layer.dense.params for layer in layers)
    best = None
    for pick in itertools.product(*(range(len(layer.options)) for layer in layers)):
        chosen = [layer.options[j] for layer, j in zip(layers, pick)]
        if total_cost(chosen) <= limit:
            value = sum(c[j] for c, j in zip(changes, pick))
            best = value if best is None else min(best, value)
    chosen = allocate_min_total(layers, changes, budget)
    got = sum(c[layer.options.index(o)] for c, layer, o in zip(changes, layers, chosen))
    if best is None:  # nothing fits: the cheapest options
        assert chosen == [min(layer.options, key=lambda o: o.params) for layer in layers]
    else:
        assert total_cost(chosen) <= limit
        assert got == pytest.approx(best)


def test_min_total_fits_a_large_budget_with_rounded_costs():
    layers = [_layer(f"l{k}", [10**6, 600_000 + k, 300_001, 1], [0, 0.1, 0.2, 0.9]) for k in range(5)]
    changes = [[0.0, 0.01, 0.05, 1.0]] * 5
    chosen = allocate_min_total(layers, changes, 0.5)
    assert total_cost(chosen) <= 0.5 * 5 * 10**6


def test_ladder_interpolates_in_squared_error_and_never_decreases():
    ladder = Ladder((0.1, 0.2), (0.01, 0.08))
    assert ladder.predict(0.0) == 0.0
    assert ladder.predict(0.1) == pytest.approx(0.01)
    assert ladder.predict(np.sqrt(0.025)) == pytest.approx(0.045)  # halfway between 0.01 and 0.04 in e^2
    assert ladder.predict(0.4) == pytest.approx(0.08 + 2.0 * (0.16 - 0.04))
    noisy = Ladder((0.1, 0.2), (0.05, 0.02))
    assert noisy.predict(0.2) >= noisy.predict(0.1)


def test_output_change_is_relative_and_refuses_non_finite():
    ref = [{"y": np.array([1.0, 3.0])}]
    assert output_change(ref, ref) == 0.0
    assert output_change(ref, [{"y": np.array([2.0, 3.0])}]) == pytest.approx(1.0 / 2.0)
    assert output_change([{"y": 100 * ref[0]["y"]}], [{"y": np.array([200.0, 300.0])}]) == pytest.approx(0.5)
    assert output_change(ref, [{"y": np.array([np.nan, 3.0])}]) == float("inf")


def test_ladder_options_are_ungrouped_ranks_spread_over_the_range():
    options = (Option(None, 1, 64, 64, 0.0), *(Option(r, 1, 8 * r, 8 * r, 1 / r) for r in range(1, 8)),
               Option(2, 2, 40, 40, 0.3))
    picked = ladder_options(LayerSpectrum("l", 8, 8, options, np.ones(8)))
    assert [o.rank for o in picked] == [1, 2, 4]
    assert all(o.groups == 1 for o in picked)


def _two_layer_model():
    """x -> A (16x16, its output scaled by 10 after a Relu) and B (the same spectrum, scaled by 0.01):
    truncating A changes y far more than truncating B by the same relative layer error."""
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        two (float[N, 16] x) => (float[N, 32] y) {
            a = MatMul (x, wa)
            b = MatMul (x, wb)
            ra = Relu (a)
            rb = Relu (b)
            a10 = Mul (ra, ten)
            b01 = Mul (rb, tiny)
            y = Concat <axis = 1> (a10, b01)
        }""")
    rng = np.random.default_rng(0)
    u, _, v = np.linalg.svd(rng.standard_normal((16, 16)))
    spectrum = np.diag(np.linspace(1.0, 0.3, 16))
    for name, value in (("wa", u @ spectrum @ v), ("wb", v @ spectrum @ u), ("ten", np.array(10.0)),
                        ("tiny", np.array(0.01))):
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return model


def test_output_allocation_keeps_the_sensitive_layer():
    rows = {"x": np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)}
    kw = dict(low_rank="all", rank_budget=0.5, calibrate=rows, verify=False)
    _, alds = optimize(_two_layer_model(), allocator="alds", **kw)
    _, output = optimize(_two_layer_model(), allocator="output", **kw)
    ranks = {f.layers[0]: f.rank for f in output.folds if f.status == "folded"}
    assert ranks.get("MatMul#0") is None or ranks["MatMul#0"] > ranks["MatMul#1"]  # the 10x branch kept fuller
    alds_ranks = {f.layers[0]: f.rank for f in alds.folds if f.status == "folded"}
    assert alds_ranks["MatMul#0"] == alds_ranks["MatMul#1"]  # same spectra: ALDS cannot tell them apart
    assert any("output-aware allocation" in n for n in output.notes)


def test_output_allocation_needs_calibration_data():
    with pytest.raises(CollapseError, match="calibrate"):
        optimize(_two_layer_model(), low_rank="all", rank_budget=0.5, allocator="output", verify=False)


@pytest.mark.parametrize("allocator", ["alds", "output"])
def test_rank_budget_auto_meets_the_target_on_the_held_out_rows(allocator):
    rng = np.random.default_rng(5)
    calib, held = (rng.standard_normal((n, 32)).astype(np.float32) for n in (200, 100))
    out, report = optimize(decaying_classifier(), low_rank="all", rank_budget="auto", allocator=allocator,
                           calibrate={"x": calib}, inputs={"x": held}, metric="top1", min_agreement=0.95)
    assert report.verification.passed
    assert report.verification.outputs[0].agreement >= 0.95
    assert report.after.params < report.before.params  # something was truncated
    search = next(n for n in report.notes if n.startswith("budget search"))
    assert search.count(":") >= 6 and "passed" in search
    truncated = [f for f in report.folds if f.status == "folded" and f.form in ("truncated", "grouped")]
    assert truncated


def test_rank_budget_auto_with_confidence_keeps_a_model_whose_bound_meets_the_target():
    rng = np.random.default_rng(5)
    calib, held = (rng.standard_normal((n, 32)).astype(np.float32) for n in (200, 400))
    kw = dict(low_rank="all", rank_budget="auto", allocator="alds", calibrate={"x": calib}, inputs={"x": held},
              metric="top1", min_agreement=0.9)
    _, plain = optimize(decaying_classifier(), **kw)
    _, bounded = optimize(decaying_classifier(), confidence=0.9, **kw)
    worst = bounded.verification.outputs[0]
    assert bounded.verification.passed and worst.agreement_bound >= 0.9 and worst.agreement > worst.agreement_bound
    assert "(its 90% lower bound) >= 90%" in bounded.verification.inputs
    # plain keeps a budget that measured 91 % on these rows; the bound asks for more, so more weights stay
    assert plain.before.params > bounded.after.params > plain.after.params
    search = next(n for n in bounded.notes if n.startswith("budget search"))
    assert search.count("(bound ") == 6


def test_rank_budget_auto_says_when_the_rows_cannot_show_the_target():
    rng = np.random.default_rng(5)
    calib, held = (rng.standard_normal((n, 32)).astype(np.float32) for n in (200, 16))
    _, report = optimize(decaying_classifier(), low_rank="all", rank_budget="auto", calibrate={"x": calib},
                         inputs={"x": held}, metric="top1", min_agreement=0.95, confidence=0.9)
    assert report.after.params == report.before.params  # nothing can pass, so every layer stays dense
    note = next(n for n in report.notes if n.startswith("no budget tried passed"))
    assert "16 rows cannot show 95% agreement" in note and "at least 32" in note
