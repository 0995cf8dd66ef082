"""Progress of long work: the stages the API reports, and the display the CLI shows on a terminal's stderr."""

import os
import pty
import subprocess
import time

import numpy as np
import pytest

import onnx_collapse as oc
from onnx_collapse.progress import Progress, TerminalProgress, advance, stage
from tests.common import MODELS
from tests.terminal import EXE, run_on_terminal

needs_exe = pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")


class Recorder(Progress):
    """Remembers what it was told: ("begin", label, total), ("step", n), ("end",), start and stop."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.units: dict[str, str | None] = {}

    def start(self) -> None:
        self.events.append(("start",))

    def stop(self) -> None:
        self.events.append(("stop",))

    def begin(self, label, total, unit=None) -> None:
        self.events.append(("begin", label, total))
        self.units[label] = unit

    def end(self) -> None:
        self.events.append(("end",))

    def step(self, count) -> None:
        self.events.append(("step", count))

    def labels(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "begin"]


def test_optimize_reports_each_stage_in_order(tmp_path):
    rec = Recorder()
    oc.optimize(MODELS / "three_layer.onnx", output=tmp_path / "o.onnx", progress=rec)
    labels = rec.labels()
    assert rec.events[0] == ("start",) and rec.events[-1] == ("stop",)
    for first, then in [("loading the model", "folding the chains"), ("folding the chains", "verifying in onnxruntime"),
                        ("verifying in onnxruntime", "writing the output")]:
        assert labels.index(first) < labels.index(then)
    assert sum(e[0] == "begin" for e in rec.events) == sum(e[0] == "end" for e in rec.events)
    assert ("begin", "folding the chains", 1) in rec.events and rec.units["folding the chains"] == "chain"


def test_no_stage_is_shown_that_does_not_run(tmp_path):
    """No calibration or truncation stage without --calibrate or a budget; internal pass names never."""
    rec = Recorder()
    oc.optimize(MODELS / "three_layer.onnx", output=tmp_path / "o.onnx", progress=rec)
    labels = rec.labels()
    assert not [label for label in labels if "calibrat" in label or "low-rank" in label or "-" in label], labels
    rec = Recorder()
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32))
    oc.optimize(MODELS / "leaky_099.onnx", calibrate=str(tmp_path / "c.npz"), slope_tol=0.05, rank_budget=0.5,
                progress=rec)
    labels = rec.labels()
    assert "reading the calibration data in onnxruntime" in labels
    assert "fitting the chains to the calibration data" in labels
    truncation = next(e for e in rec.events if e[0] == "begin" and e[1].startswith("low-rank truncation"))
    assert truncation[2] == 1 and rec.units[truncation[1]] == "layer"


def test_analyze_counts_one_step_per_layer_spectrum():
    rec = Recorder()
    found = oc.analyze(MODELS / "no_fold_slope_05.onnx", spectrum=True, low_rank="all", progress=rec)
    assert len(found.spectra) == 2
    begin = rec.events.index(("begin", "each layer's spectrum", 2))
    assert rec.events[begin + 1:begin + 4] == [("step", 1), ("step", 1), ("end",)]
    assert rec.units["each layer's spectrum"] == "layer"


def test_verify_reports_its_runs():
    rec = Recorder()
    oc.verify(MODELS / "leaky_1.onnx", MODELS / "leaky_1.onnx", progress=rec)
    assert rec.labels() == ["loading the models", "running the original model", "running the optimized model"]


def test_stages_end_and_progress_stops_when_the_work_fails(tmp_path):
    rec = Recorder()
    with pytest.raises(oc.CollapseError):
        oc.optimize(tmp_path / "missing.onnx", progress=rec)
    assert rec.events[-2:] == [("end",), ("stop",)]


def test_without_a_progress_object_nothing_is_reported_and_hooks_are_harmless():
    with stage("outside any call"):
        advance()  # no progress installed: silently ignored
    oc.analyze(MODELS / "leaky_1.onnx")


def test_the_terminal_display_names_the_stage_and_the_steps():
    class Tty:
        """A file that claims to be a terminal, collecting what rich writes."""

        def __init__(self):
            self.text = []

        def write(self, text):
            self.text.append(text)

        def flush(self):
            pass

        def isatty(self):
            return True

    out = Tty()
    display = TerminalProgress(out)
    display.start()
    display.begin("each layer's spectrum", 3, "layer")
    display.step(1)
    display.stop()
    assert "each layer's spectrum" in "".join(out.text) and "layer 2 of 3" in "".join(out.text)


@needs_exe
def test_cli_shows_progress_on_a_terminal_and_keeps_stdout_clean(tmp_path):
    code, terminal, stdout = run_on_terminal("optimize", MODELS / "three_layer.onnx", tmp_path / "o.onnx")
    assert code == 0
    assert "loading the model" in terminal and "verifying in onnxruntime" in terminal
    assert "starting: loading onnx and onnxruntime" in terminal
    assert "verification: PASSED" in stdout and "\x1b" not in stdout


@pytest.mark.slow
@needs_exe
def test_the_terminal_shows_something_within_the_first_second(tmp_path):
    """The display starts before onnx and onnxruntime are imported (they take seconds on a busy machine)."""
    master, slave = pty.openpty()
    began = time.monotonic()
    proc = subprocess.Popen([EXE, "optimize", MODELS / "three_layer.onnx", tmp_path / "o.onnx"],
                            stdout=subprocess.DEVNULL, stderr=slave, env=dict(os.environ, TERM="xterm"))
    os.close(slave)
    seen, shown_after = b"", None
    while shown_after is None:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        seen += data
        if b"starting" in seen:
            shown_after = time.monotonic() - began
    proc.wait(timeout=120)
    os.close(master)
    # the interpreter and click, rich and numpy load first; a busy two-core machine takes ~0.5 s for them
    assert shown_after is not None and shown_after < 1.5, (shown_after, seen[:200])


@pytest.mark.slow
@needs_exe
def test_quiet_silences_the_terminal(tmp_path):
    code, terminal, stdout = run_on_terminal("optimize", MODELS / "three_layer.onnx", tmp_path / "o.onnx", "--quiet")
    assert code == 0 and "verification: PASSED" in stdout
    assert terminal == ""


@needs_exe
@pytest.mark.parametrize("args", [
    ["optimize", MODELS / "three_layer.onnx", "{tmp}/o.onnx"],
    ["analyze", MODELS / "three_layer.onnx", "--spectrum"],
    ["verify", MODELS / "leaky_1.onnx", MODELS / "leaky_1.onnx"],
])
@pytest.mark.slow
def test_stderr_stays_empty_when_it_is_not_a_terminal(tmp_path, args):
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    result = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout and result.stderr == ""
