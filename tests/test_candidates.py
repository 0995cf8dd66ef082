"""The candidate list: forms pushed in order, undone from the top, one report row built at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_collapse import analyze, optimize
from onnx_collapse.candidates import Candidate, Chain, Outcome, applied, records
from onnx_collapse.io import ModelSource
from onnx_collapse.options import Options
from onnx_collapse.pipeline import run_passes
from onnx_collapse.plans import FoldPlan, Segment
from onnx_collapse.report import ErrorStats

MODELS = Path(__file__).resolve().parents[1] / "models"


def _error(max_abs: float) -> ErrorStats:
    return ErrorStats("y", max_abs, max_abs, max_abs, max_abs, 1e-4, 1e-3, max_abs <= 1e-4)


def _plan(outcome: Outcome) -> FoldPlan:
    return FoldPlan(outcome, (), (0, 1), "x", "y", [], [], np.dtype(np.float32), None, None)


def _candidate() -> Candidate:
    chain = Chain(["fc1", "fc2"], ["act"], [8, 16, 8], [[1.0, 1.0]], 264, 256)
    return Candidate(chain, (), Segment([], []))


def test_pushed_forms_stack_and_the_last_is_in_force():
    c = _candidate()
    exact = c.push(_plan(Outcome("dense", params_after=72, macs_after=64)))
    truncated = c.push(_plan(exact.outcome.derived(form="truncated", rank=2, params_after=40)))
    assert c.applied is truncated and truncated.fallback is exact and exact.fallback is None
    assert truncated.candidate is c and applied([c]) == [truncated]
    (row,) = records([c])
    assert (row.status, row.form, row.rank, row.params_before, row.params_after) == ("folded", "truncated", 2, 264, 40)


def test_undo_falls_back_and_lists_the_undone_form_as_an_attempt():
    c = _candidate()
    exact = c.push(_plan(Outcome("dense", params_after=72)))
    truncated = c.push(_plan(exact.outcome.derived(form="truncated", rank=2, params_after=40)))
    truncated.outcome.error = _error(0.5)
    c.undo(truncated, exact, "its own error fails")
    row = c.record()
    assert row.status == "folded" and row.form == "dense"
    assert [(a.form, a.rank, a.reason) for a in row.attempts] == [("truncated", 2, "its own error fails")]
    assert "truncated to rank 2 undone: its own error fails; kept the exact fold instead" in row.reason
    c.undo(exact, None, "the model fails")
    row = c.record()
    assert row.status == "reverted" and row.form == "dense" and row.reason == "the model fails"
    assert applied([c]) == []


def test_a_calibrated_form_reports_the_plain_fold_error_below_it():
    c = _candidate()
    plain = c.push(_plan(Outcome("dense")))
    plain.outcome.error = _error(3e-3)
    fitted = c.push(_plan(plain.outcome.derived(calibrated=True, calibration_rms=[1e-2, 1e-3])))
    fitted.outcome.error = _error(4e-4)
    row = c.record()
    assert row.calibrated and row.plain_error.max_abs == pytest.approx(3e-3) and row.error.max_abs == pytest.approx(4e-4)


def test_a_single_layer_target_is_reported_only_once_written():
    c = _candidate()
    c.status = "target"
    assert records([c]) == []
    c.push(_plan(Outcome("truncated", rank=1)))
    assert [r.status for r in records([c])] == ["folded"]


def test_the_passes_leave_one_candidate_per_chain_with_its_form_in_force():
    contexts = run_passes(ModelSource(onnx.load(str(MODELS / "three_layer.onnx"))), Options())
    (ctx,) = contexts
    (c,) = ctx.candidates
    assert c.applied is not None and c.applied.candidate is c and c.chain.layers == ["0", "3", "5"]


def test_analyze_shows_the_same_rows_as_optimize_marked_foldable(tmp_path):
    path = str(MODELS / "three_layer.onnx")
    proposed = analyze(path).report.folds
    _, report = optimize(path, output=str(tmp_path / "out.onnx"))
    assert [r.status for r in proposed] == ["foldable"] and [r.status for r in report.folds] == ["folded"]
    assert [(r.layers, r.form, r.params_after) for r in proposed] == \
        [(r.layers, r.form, r.params_after) for r in report.folds]


def test_a_truncation_undone_by_verification_leaves_the_exact_fold_with_the_attempt(tmp_path):
    """Random inputs at the default tolerance undo a deep truncation; the row keeps the exact form."""
    _, report = optimize(str(MODELS / "bottleneck.onnx"), output=str(tmp_path / "out.onnx"), low_rank="all",
                         rank_budget=0.1)
    undone = [a for r in report.folds for a in r.attempts if a.form == "truncated"]
    reverted = [r for r in report.folds if r.status == "reverted"]
    assert undone or reverted
    for r in report.folds:
        if r.attempts:
            assert r.status == "folded" and r.form in ("dense", "factor") and "undone" in r.reason
