"""The low-rank pass: truncating folds and single layers to a budget, reverting a truncation that fails
verification, and saying whether the budget was met."""

import onnx

from onnx_collapse import optimize
from tests.builders import ActSpec, ChainSpec, LayerSpec, build


def test_truncation_end_to_end_reports_prediction_and_measurement():
    spec = ChainSpec(48, [LayerSpec(64), LayerSpec(48)], [ActSpec()])
    model = build(spec)
    out, report = optimize(model, rank_budget=0.4, atol=10.0, rtol=10.0)
    (record,) = report.folds
    assert record.form == "truncated" and record.status == "folded"
    assert record.predicted_error is not None and record.error.max_abs > 0
    assert record.macs_after <= 0.4 * 48 * 48
    onnx.checker.check_model(out)


def test_truncation_is_reverted_to_the_exact_fold_at_default_tolerance():
    model = build(ChainSpec(48, [LayerSpec(64), LayerSpec(48)], [ActSpec()]))
    _, report = optimize(model, rank_budget=0.4)
    (record,) = report.folds  # one row per chain: its final form, the undone truncation among its attempts
    assert (record.form, record.status) == ("dense", "folded")
    assert [(a.form, a.rank is not None) for a in record.attempts] == [("truncated", True)]
    assert not record.attempts[0].error.passed and "kept the exact fold instead" in record.reason
    assert report.verification.passed
    outcome = report.truncation
    assert (outcome.planned, outcome.kept, outcome.undone, outcome.met) == (1, 0, 1, False)
    assert outcome.summary.startswith("--rank-budget 0.4 NOT met")
    assert outcome.needs[0].required_atol == record.attempts[0].error.required_atol > record.attempts[0].error.atol


def test_a_met_budget_says_so_and_no_budget_says_nothing():
    model = build(ChainSpec(48, [LayerSpec(64), LayerSpec(48)], [ActSpec()]))
    _, report = optimize(model, rank_budget=0.4, atol=10.0, rtol=10.0)
    assert report.truncation.met and report.truncation.summary.startswith("--rank-budget 0.4 met: all 1 planned")
    assert optimize(model)[1].truncation is None
    assert optimize(model, rank_budget="auto")[1].truncation.goal == "--rank-budget auto"


def test_low_rank_all_touches_single_layers_and_grouping_runs():
    model = build(ChainSpec(48, [LayerSpec(64, op="matmul")], input_rank=3))
    out, report = optimize(model, rank_budget=0.5, low_rank="all", max_groups=4, atol=10.0, rtol=10.0)
    (record,) = report.folds
    assert record.form in ("truncated", "grouped") and record.status == "folded"
    assert report.verification.passed
