"""optimize --prune-share (onnx_collapse.joint): pruning, then folding and truncation, in one run judged against
the original; with auto shares and budgets, the split between the two searched and the smallest passing model
kept."""

import hashlib

import numpy as np
import onnx
import pytest

import onnx_collapse as oc
from onnx_collapse.errors import CollapseError
from onnx_collapse.joint import FRACTIONS, shares_to_try
from onnx_collapse.prune import kept_at, prunable_pairs, prune
from tests.common import assert_one_line_error, cli
from tests.test_prune import _rows, _run, pair_model

CALIB, HELD = _rows(96, 1), _rows(32, 2)
LOOSE = dict(atol=0.05, rtol=0.0)


def _weights(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_the_shares_tried_are_the_largest_and_fractions_of_it_only_with_a_budget_search():
    assert shares_to_try(0.4, True) == [0.4, *(0.4 * f for f in sorted(FRACTIONS, reverse=True))]
    assert shares_to_try(0.4, False) == [0.4]
    assert shares_to_try(0.0, True) == [0.0]


def test_a_given_share_is_pruning_then_optimizing_judged_against_the_original():
    model = pair_model(dup=1)  # a quarter of its channels cannot go without loss
    out, report = oc.optimize(model, prune_share=0.25, calibrate=CALIB, inputs=HELD, atol=10.0, rtol=0.0)
    pruned, _ = prune(model, share=0.25, calibrate=CALIB, verify=False)
    np.testing.assert_allclose(_run(out, HELD)[0], _run(pruned, HELD)[0], atol=1e-5)  # exact folds on top
    assert report.pruning.share == 0.25 and report.pruning.pairs == 1 and not report.pruning.tried
    assert report.before.params == _weights(model) > report.after.params
    error = float(np.abs(_run(out, HELD)[0] - _run(model, HELD)[0]).max())
    assert error > 1e-2  # the check is against the original, not against the pruned model it optimized
    assert report.verification.passed and report.verification.outputs[0].max_abs == pytest.approx(error, rel=1e-3)
    assert report.verification.inputs == "the given inputs, compared with the original model"


def test_auto_shares_and_budgets_keep_the_smallest_model_that_passes_against_the_original():
    model = pair_model(dup=4, second=True)
    out, report = oc.optimize(model, prune_share="auto", rank_budget="auto", low_rank="all", calibrate=CALIB,
                              inputs=HELD, **LOOSE)
    largest = max(s["share"] for s in report.pruning.search if s["passed"])
    tried = report.pruning.tried
    pairs = prunable_pairs(model)
    distinct = {kept_at(pairs, v): v for v in reversed(shares_to_try(largest, True))}  # whole blocks: fewer models
    assert [t.share for t in tried] == sorted(distinct.values(), reverse=True) and len(tried) >= 2
    skipped = [v for v in shares_to_try(largest, True) if v not in distinct.values()]
    assert all(any(f"share {v:.3g} keeps the channels share" in n for n in report.notes) for v in skipped)
    passing = [t for t in tried if t.passed]
    assert passing and report.after.params == min(t.params for t in passing) == _weights(out)
    assert report.pruning.share == min(passing, key=lambda t: t.params).share
    assert all(t.budget is not None for t in passing)
    checked = oc.verify(model, out, inputs=HELD, **LOOSE)  # the output holds the criterion against the original
    assert checked.passed
    assert any("--prune-share auto: largest share passing alone" in n for n in report.notes)


def test_with_held_out_calibration_rows_the_verification_says_so():
    _, report = oc.optimize(pair_model(dup=4), prune_share=0.25, calibrate=_rows(120, 1), **LOOSE)
    assert report.verification.passed and "held out" in report.verification.inputs


def test_a_share_that_fails_alone_is_a_failed_verification_with_its_verdict():
    _, report = oc.optimize(pair_model(dup=0), prune_share=0.5, calibrate=CALIB, inputs=HELD, atol=1e-6, rtol=0.0)
    assert not report.verification.passed and report.verification.n_input_sets >= 1
    assert report.pruning.share == 0.5 and report.after.params < report.before.params  # the pruned model's
    assert any("pruned at share 0.5 fails verification on its own" in n for n in report.notes)


@pytest.mark.parametrize("kwargs, flag", [(dict(inputs=HELD, **LOOSE), "calibrate"),
                                          (dict(calibrate=CALIB, inputs=HELD), "metric")])
def test_pruning_without_data_or_a_criterion_is_refused(kwargs, flag):
    with pytest.raises(CollapseError, match=flag):
        oc.optimize(pair_model(), prune_share=0.25, **kwargs)


def test_a_share_outside_zero_to_one_is_refused():
    with pytest.raises(CollapseError, match="prune_share"):
        oc.Options(prune_share=1.5)


@pytest.mark.slow
def test_the_command_writes_the_kept_model_and_leaves_its_inputs_alone(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(pair_model(dup=4, second=True), src)
    np.savez(tmp_path / "calib.npz", **CALIB)
    np.savez(tmp_path / "held.npz", **HELD)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    r = cli("optimize", src, out, "--prune-share", "0.3", "--inputs", tmp_path / "held.npz", "--atol", "0.05")
    assert_one_line_error(r, 2, "--calibrate")
    r = cli("optimize", src, out, "--prune-share", "2", "--calibrate", tmp_path / "calib.npz")
    assert r.returncode == 2 and "not a fraction" in r.stderr and not out.exists()
    r = cli("optimize", src, out, "--prune-share", "auto", "--rank-budget", "auto", "--low-rank", "all",
            "--calibrate", tmp_path / "calib.npz", "--inputs", tmp_path / "held.npz", "--atol", "0.05", "--rtol", "0")
    assert r.returncode == 0, r.stderr
    assert "PASSED" in r.stdout and "--prune-share auto: largest share passing alone" in r.stdout
    assert oc.verify(src, out, inputs=str(tmp_path / "held.npz"), **LOOSE).passed
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before} == before


def test_a_model_without_a_pair_is_optimized_unpruned_and_said_so():
    from tests.common import MODELS

    out, report = oc.optimize(str(MODELS / "three_layer.onnx"), prune_share="auto", calibrate={
        "x": np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32)}, **LOOSE)
    assert report.pruning.share == 0 and report.pruning.pairs == 0 and report.verification.passed
    assert any("no convolution pair to prune" in n for n in report.notes) and report.after.params < report.before.params


def test_an_external_data_model_is_pruned_and_optimized_and_its_data_is_untouched(tmp_path):
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    model = pair_model(dup=4, second=True)
    onnx.save(model, src, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
              size_threshold=0)
    data = {p: p.read_bytes() for p in src.parent.iterdir()}
    out_path = tmp_path / "out" / "model.onnx"
    out_path.parent.mkdir()
    _, report = oc.optimize(str(src), output=str(out_path), prune_share=0.25, calibrate=CALIB, inputs=HELD,
                            atol=10.0, rtol=0.0)
    assert report.verification.passed and report.verification.n_input_sets >= 1
    assert {p: p.read_bytes() for p in src.parent.iterdir()} == data
    model = pair_model(dup=4, second=True)  # onnx.save moved the data of the one above out to the file
    assert oc.verify(model, str(out_path), inputs=HELD, atol=10.0, rtol=0.0).passed
    assert report.after.params < report.before.params == _weights(model)


def test_a_failing_share_leaves_an_existing_output_as_it_was(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(pair_model(dup=0), src)
    out.write_bytes(b"an older output")
    np.savez(tmp_path / "calib.npz", **CALIB)
    np.savez(tmp_path / "held.npz", **HELD)
    r = cli("optimize", src, out, "--prune-share", "0.5", "--calibrate", tmp_path / "calib.npz", "--inputs",
            tmp_path / "held.npz", "--atol", "1e-6", "--rtol", "0", "--overwrite", "--report", tmp_path / "r.json")
    assert r.returncode == 1 and "verification failed; no output written" in r.stderr  # as prune says it
    assert "fails verification on its own" in r.stdout and "Traceback" not in r.stderr
    assert out.read_bytes() == b"an older output" and sorted(p.name for p in tmp_path.iterdir()) == [
        "calib.npz", "held.npz", "in.onnx", "out.onnx"]  # no report either: it would describe no output


def test_auto_shares_and_budgets_within_an_accuracy_drop_keep_a_model_that_reads_the_labels_that_well():
    model = pair_model(dup=4, second=True)
    held = _rows(64, 2)
    truth = _run(model, held)[0].argmax(axis=-1)  # [rows, classes, 6]: the original right on 90 % of the units
    flip = np.random.default_rng(7).random(truth.shape) < 0.1
    truth[flip] = (truth[flip] + 1) % 6
    out, report = oc.optimize(model, prune_share="auto", rank_budget="auto", low_rank="all", calibrate=CALIB,
                              inputs=held, metric="top1", labels={"y": truth}, max_drop=0.02)
    accuracy = [float((_run(m, held)[0].argmax(axis=-1) == truth).mean()) for m in (model, out)]
    stat = report.verification.outputs[0]
    assert report.verification.passed and report.after.params < report.before.params
    assert (stat.reference_accuracy, stat.accuracy) == pytest.approx(accuracy)
    assert accuracy[0] - accuracy[1] <= 0.02
    assert all(t.verdict.endswith("passed") == t.passed for t in report.pruning.tried)
    assert any("accuracy" in s["verdict"] for s in report.pruning.search)
