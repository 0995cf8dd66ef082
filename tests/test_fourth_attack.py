"""A fourth hostile pass (session 2026-12-07, second half): the output and its report committed together,
signals deferred while outputs are renamed in, data files of killed runs removed, and the findings on
prune's reports, reference wording and option checks."""

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_collapse import io, optimize
from onnx_collapse.errors import CollapseError
from tests.builders import mlp, run_model, save_external


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
