"""A fourth hostile pass (session 2026-12-07, second half): the output and its report committed together,
signals deferred while outputs are renamed in, data files of killed runs removed, and the findings on
prune's reports, reference wording and option checks."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_collapse import io, optimize
from onnx_collapse import verify as oc_verify
from onnx_collapse.compare import compare_outputs
from onnx_collapse.errors import CollapseError
from onnx_collapse.options import Options
from onnx_collapse.prune import prune
from onnx_collapse.signals import signals_deferred
from tests.builders import mlp, run_model, save_external
from tests.common import assert_one_line_error, cli
from tests.test_prune import _rows, pair_model

CALIB, HELD = _rows(96, 1), _rows(32, 2)


def nudged(model: onnx.ModelProto, scale: float) -> onnx.ModelProto:
    """``model`` with its reader's weights moved by ``scale`` of their size: a reference it is near."""
    for t in model.graph.initializer:
        if t.name == "wb":
            w = onnx.numpy_helper.to_array(t)
            t.CopyFrom(onnx.numpy_helper.from_array((w * (1 + scale)).astype(w.dtype), t.name))
    return model


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def params(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


@pytest.fixture
def earlier_run(tmp_path):
    """An output and its report from an earlier run of another model."""
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    onnx.save(mlp(8, 16, 4), str(first))
    onnx.save(mlp(8, 64, 4), str(second))
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    optimize(str(first), output=out, report_file=report)
    return second, out, report


# 1. the report is written in full before the output is replaced: a report that cannot be written leaves both


def test_a_report_that_cannot_be_written_leaves_the_older_output_and_report(earlier_run, monkeypatch):
    second, out, report = earlier_run
    before = digest(out), digest(report)
    real = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == report.name:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(CollapseError, match="cannot write .*report.json.*No space left"):
        optimize(str(second), output=out, report_file=report)
    assert (digest(out), digest(report)) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(io.STAGING_PREFIX)]


def test_the_report_describes_the_output_it_was_committed_with(earlier_run):
    second, out, report = earlier_run
    optimize(str(second), output=out, report_file=report)
    written = json.loads(report.read_text())
    assert written["after"]["params"] == params(out)
    assert written["after"]["file_bytes"] == out.stat().st_size


# 2. a signal during the commit waits for it: the output and its report are the new ones, then the run stops


def test_ctrl_c_during_the_commit_is_taken_after_output_and_report_are_in_place(earlier_run, monkeypatch):
    second, out, report = earlier_run
    real = os.replace
    sent = []

    def replace(src, dst, *args, **kwargs):
        if not sent:  # the first rename of the commit: the user's Ctrl-C arrives now
            sent.append(dst)
            os.kill(os.getpid(), signal.SIGINT)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        optimize(str(second), output=out, report_file=report)
    assert sent
    assert json.loads(report.read_text())["after"]["params"] == params(out)
    expected = run_model(mlp(8, 64, 4), x=np.ones((2, 8), np.float32))
    assert np.allclose(run_model(onnx.load(str(out)), x=np.ones((2, 8), np.float32))[0], expected[0], atol=1e-5)


# 3. the data file a killed run moved in but never committed a model for is removed by the next run


def test_a_killed_runs_data_file_is_removed_by_the_next_run_once_a_minute_old(tmp_path, monkeypatch):
    src = tmp_path / "in.onnx"
    save_external(mlp(64, 128, 32), src)
    out = tmp_path / "out.onnx"
    orphan = tmp_path / "out.onnx.0123456789ab.data"
    orphan.write_bytes(b"\0" * 4096)  # moved in by a run killed before its model's rename
    fresh = tmp_path / "out.onnx.ba9876543210.data"
    optimize(str(src), output=out)
    assert orphan.exists(), "moved in under a minute ago: maybe a live run's, kept"
    monkeypatch.setattr(io, "STALE_AFTER", -1.0)
    fresh.write_bytes(b"\0")
    optimize(str(src), output=out)
    assert not orphan.exists() and not fresh.exists()
    used = {Path(p).name for p in io.model_files(out, "output")}
    assert {p.name for p in tmp_path.iterdir()} == {"in.onnx", "in.onnx.data", *used}
    other = tmp_path / "other.onnx.0123456789ab.data"  # another output's data is never this output's orphan
    other.write_bytes(b"\0")
    optimize(str(src), output=out)
    assert other.exists()


# 4. a signal in a step that must be whole (a commit, a compiled module's import) is taken when the step ends


@pytest.mark.parametrize("from_thread", [False, True])
def test_a_signal_inside_a_deferred_step_is_taken_when_the_step_ends(from_thread):
    steps = []

    def send():
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            if from_thread:  # Python runs handlers in the main thread whichever thread the signal reaches
                worker = threading.Thread(target=send)
                worker.start()
                worker.join()
            else:
                send()
            time.sleep(0.05)
            steps.append("whole")
    assert steps == ["whole"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


# 5. optimize --prune-share with --reference: judged against the reference, said so, and checked first


def test_a_pruned_model_with_nothing_to_fold_is_judged_against_the_reference(tmp_path):
    src, ref = tmp_path / "in.onnx", tmp_path / "ref.onnx"
    onnx.save(pair_model(dup=4), src)
    onnx.save(nudged(pair_model(dup=4), 0.05), ref)  # a reference the input is near, not equal to
    out, report = optimize(str(src), prune_share=0.25, calibrate=CALIB, inputs=HELD, reference=str(ref),
                           atol=10.0, rtol=0.0)
    assert report.verification.n_input_sets >= 1 and "compared with the reference 'ref.onnx'" in report.verification.inputs
    direct = oc_verify(str(ref), out, inputs=HELD, atol=10.0, rtol=0.0)
    assert direct.outputs[0].max_abs > oc_verify(str(src), out, inputs=HELD, atol=10.0, rtol=0.0).outputs[0].max_abs
    assert report.verification.outputs[0].max_abs == pytest.approx(direct.outputs[0].max_abs, rel=1e-6)
    assert any("verified against the reference model" in n for n in report.notes)


def test_an_input_that_fails_against_the_reference_is_said_before_any_pruning(tmp_path, monkeypatch):
    src, ref = tmp_path / "in.onnx", tmp_path / "ref.onnx"
    onnx.save(pair_model(dup=4), src)
    onnx.save(nudged(pair_model(dup=4), 3.0), ref)  # far from the input
    pruned = []
    monkeypatch.setattr("onnx_collapse.joint.prune_model", lambda *a, **k: pruned.append(1))
    with pytest.raises(CollapseError, match="the input model itself fails verification against reference"):
        optimize(str(src), prune_share=0.25, calibrate=CALIB, inputs=HELD, reference=str(ref), atol=1e-3, rtol=0.0)
    assert not pruned


# 6. options that could never pass, or say two things, are refused; a --keep-layer in no pair is noted


def test_max_drop_zero_with_a_confidence_bound_is_refused():
    with pytest.raises(CollapseError, match="confidence with max_drop 0 can never pass"):
        Options(inputs={"x": np.zeros((2, 2), np.float32)}, labels={"y": np.zeros(2, np.int64)}, metric="top1",
                max_drop=0.0, confidence=0.9)
    Options(inputs={"x": np.zeros((2, 2), np.float32)}, labels={"y": np.zeros(2, np.int64)}, metric="top1",
            max_drop=0.0, confidence=0.5)  # a bound at 0.5 is the measured drop: it can pass


def test_an_input_shape_given_twice_for_one_input_is_refused(tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save(mlp(8, 16, 4), src)
    r = cli("optimize", src, tmp_path / "o.onnx", "--input-shape", "x:2x8", "--input-shape", "x:5x8")
    assert_one_line_error(r, 2, "--input-shape gives input 'x' twice (2x8 and 5x8)")
    assert not (tmp_path / "o.onnx").exists()


def test_a_keep_layer_in_no_pair_is_noted(tmp_path):
    model = pair_model(dup=4, second=True)
    last = model.graph.output[0]
    model.graph.node.append(onnx.helper.make_node("Relu", [last.name], ["tail_out"], name="tail"))
    last.name = "tail_out"
    _, report = prune(model, share=0.25, calibrate=CALIB, verify=False, keep_layers=("tail",))
    assert any("'tail' in no convolution pair" in n for n in report.notes)
    _, kept = prune(pair_model(dup=4, second=True), share=0.25, calibrate=CALIB, verify=False, keep_layers=("B",))
    assert not any("in no convolution pair" in n for n in kept.notes)


def test_ctc_on_an_output_without_positions_says_what_ctc_reads():
    scores = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    with pytest.raises(CollapseError, match=r"has shape 4x10; it reads outputs of shape \[samples, positions"):
        compare_outputs([{"y": scores}], [{"y": scores}], None, None, "rows", metric="ctc")


# 7. searches do not make or judge one model twice, and say so


def test_the_budget_search_judges_each_distinct_allocation_once(monkeypatch):
    import onnx_collapse.passes.lowrank as lowrank

    judged = []
    real = lowrank.judge
    monkeypatch.setattr(lowrank, "judge", lambda *a, **k: judged.append(1) or real(*a, **k))
    model = mlp(16, 24, 10, slope=1.0)
    rows = {"x": np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)}
    _, report = optimize(model, rank_budget="auto", low_rank="all", inputs=rows, metric="top1", min_agreement=0.5)
    search = next(n for n in report.notes if n.startswith("budget search"))
    repeats = search.count("the same model")
    assert len(judged) == lowrank.SEARCH_STEPS - repeats and repeats > 0


# 8. the temporary folder: a run leaves nothing of its own there (onnxruntime itself writes a `.ses` file)


def test_verify_and_optimize_leave_nothing_of_theirs_in_the_temporary_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    src = tmp_path / "in.onnx"
    onnx.save(mlp(8, 16, 4, slope=1.0), src)
    np.savez(tmp_path / "rows.npz", x=np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    env = dict(os.environ, TMPDIR=str(tmp))
    for args in (["verify", src, src, "--inputs", tmp_path / "rows.npz"],
                 ["optimize", src, tmp_path / "o.onnx", "--inputs", tmp_path / "rows.npz", "--low-rank", "all",
                  "--rank-budget", "auto", "--metric", "top1", "--min-agreement", "0.5"]):
        result = subprocess.run([sys.executable, "-m", "onnx_collapse", *map(str, args)], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert {p.name for p in tmp.iterdir()} <= {".ses"}  # onnxruntime's own session file, not ours


def test_prunes_report_file_describes_the_pruned_output_it_was_committed_with(tmp_path):
    src, out, rep = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(pair_model(dup=4, second=True), src)
    prune(str(src), share=0.25, calibrate=CALIB, verify=False, output=out, report_file=rep)
    written = json.loads(rep.read_text())
    assert written["after"]["params"] == params(out) < written["before"]["params"] == params(src)
    assert (written["before"]["file_bytes"], written["after"]["file_bytes"]) == (src.stat().st_size, out.stat().st_size)
