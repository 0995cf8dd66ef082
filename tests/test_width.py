"""Printed tables fit the terminal width (COLUMNS) when stdout is a terminal; the JSON keeps every word."""

import json
import os
import subprocess

import pytest
from click.testing import CliRunner

from onnx_collapse import cli as cli_module
from onnx_collapse.cli import cli
from tests.common import MODELS
from tests.terminal import EXE, run_on_terminal

SHIPPED = sorted(MODELS.glob("*.onnx"))
LONG_REASON = "kept the exact fold instead"  # the end of a reverted truncation's reason (three_layer at 0.5)


def run(width: int | None, *args) -> str:
    """The command's stdout, in process; with ``width``, as if stdout were a terminal that wide."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli_module, "stdout_is_terminal", lambda: width is not None)
        result = CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": str(width or 200)},
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def widest(text: str) -> int:
    return max(map(len, text.splitlines()))


@pytest.fixture(scope="module")
def optimized(tmp_path_factory) -> dict:
    """Each shipped model optimized once (unlimited width), for the verify runs."""
    folder = tmp_path_factory.mktemp("optimized")
    for model in SHIPPED:
        run(None, "optimize", model, folder / model.name)
    return {model: folder / model.name for model in SHIPPED}


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("model", SHIPPED, ids=lambda p: p.stem)
def test_every_command_fits_the_width(tmp_path, model, width, optimized):
    outputs = [
        run(width, "optimize", model, tmp_path / "o.onnx"),
        run(width, "analyze", model, "--spectrum", "--low-rank", "all"),
        run(width, "verify", model, optimized[model]),
    ]
    for text in outputs:
        assert widest(text) <= width, text


@pytest.mark.parametrize("width", [80, 60])
def test_a_long_reason_wraps_in_the_table_and_is_never_cut(tmp_path, width):
    args = ["optimize", MODELS / "three_layer.onnx", tmp_path / "o.onnx", "--rank-budget", "0.5"]
    text = run(width, *args)
    assert widest(text) <= width and "undone" in text and "..." not in text
    words = " ".join(text.split())
    assert "truncated to rank 10 undone: its own max abs error is" in words and LONG_REASON in words
    assert "--rank-budget 0.5 NOT met" in words and "needs --atol 0.32 at --rtol 1e-03" in words
    assert LONG_REASON in run(width, *args, "--json", "--report", tmp_path / "r.json")
    folds = json.loads((tmp_path / "r.json").read_text())["folds"]
    assert folds[0]["reason"].endswith(LONG_REASON)


def test_without_a_terminal_nothing_is_cut(tmp_path):
    text = run(None, "optimize", MODELS / "three_layer.onnx", tmp_path / "o.onnx", "--rank-budget", "0.5")
    assert LONG_REASON in text and widest(text) > 120


@pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")
def test_a_real_terminal_gets_fitted_and_a_pipe_does_not(tmp_path):
    args = ["optimize", MODELS / "three_layer.onnx", tmp_path / "o.onnx", "--rank-budget", "0.5", "--quiet"]
    code, terminal, _ = run_on_terminal(*args, stream="stdout", columns=60)
    assert code == 0 and "verification: PASSED" in terminal and widest(terminal) <= 60
    piped = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "60"})
    assert LONG_REASON in piped.stdout
