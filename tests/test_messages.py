"""Messages: notes for options that have no effect, help text for every option, the bare command."""

import json
import shutil
import subprocess

import click
import numpy as np
import pytest

from onnx_collapse.cli import cli as command_group
from tests.common import MODELS, assert_one_line_error

EXE = shutil.which("onnx-collapse")
pytestmark = pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")
MODEL = MODELS / "three_layer.onnx"


def cli(*args, cwd=None):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def notes(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


@pytest.mark.parametrize("args,flags,why", [
    (["--min-agreement", "0.9"], "--min-agreement", "without --metric top1, sequence or ctc"),
    (["--max-groups", "2", "--budget-metric", "macs"], "--max-groups, --budget-metric",
     "without --rank-budget or --max-error"),
    (["--error-metric", "frobenius"], "--error-metric", "without --rank-budget or --max-error"),
    (["--low-rank", "all"], "--low-rank", "without --rank-budget or --max-error"),
    (["--max-error", "0.5", "--allocator", "uniform"], "--allocator", "without --rank-budget"),
    (["--no-verify", "--atol", "1"], "--atol", "with --no-verify"),
    (["--metric", "top1", "--ctc-strip", "3"], "--ctc-strip", "without --metric ctc"),
    (["--confidence", "0.9"], "--confidence", "without --metric top1, sequence or ctc"),
])
def test_optimize_notes_options_without_effect(tmp_path, args, flags, why):
    lines = notes(cli("optimize", MODEL, tmp_path / "o.onnx", *args))
    verb = "have" if "," in flags else "has"
    assert lines == [f"onnx-collapse: note: {flags} {verb} no effect {why}"]


@pytest.mark.parametrize("args", [
    [],
    ["--metric", "top1", "--min-agreement", "0.9"],
    ["--rank-budget", "0.9", "--max-groups", "2", "--allocator", "uniform", "--low-rank", "all", "--atol", "1"],
    ["--min-agreement", "0.9", "--quiet"],
])
def test_no_note_when_every_option_counts_or_quiet(tmp_path, args):
    assert notes(cli("optimize", MODEL, tmp_path / "o.onnx", *args)) == []


def test_analyze_and_verify_notes(tmp_path):
    assert notes(cli("analyze", MODEL, "--low-rank", "all")) == [
        "onnx-collapse: note: --low-rank has no effect without --spectrum or --plot"]
    np_file = tmp_path / "x.npz"
    np.savez(np_file, x=np.ones((2, 64), np.float32))
    result = cli("verify", MODEL, MODEL, "--inputs", np_file, "--seed", "3", "--min-agreement", "0.5")
    assert notes(result) == ["onnx-collapse: note: --min-agreement has no effect without --metric top1, sequence or ctc",
                             "onnx-collapse: note: --seed has no effect with --inputs (no random inputs are made)"]


def _options(group: click.Group):
    for name, command in group.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                yield name, param


@pytest.mark.parametrize("name,option", list(_options(command_group)),
                         ids=lambda x: x if isinstance(x, str) else x.opts[-1])
def test_every_option_has_help_text(name, option):
    assert option.help and len(option.help.split()) >= 3, f"{name} {option.opts}"


def test_budget_metric_and_slope_tol_help_is_shown():
    def words(*args):
        return " ".join(cli(*args).stdout.split())

    assert "--budget-metric [params|macs|time] What --rank-budget counts" in words("optimize", "--help")
    assert "--slope-tol FLOAT RANGE Count activations whose slopes" in words("analyze", "--help")


def test_bare_command_prints_the_help_and_exits_2():
    result = cli()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("Usage: onnx-collapse") and "optimize" in result.stderr
    assert "error" not in result.stderr.lower()


def test_analyze_json_has_the_predicted_after_block():
    payload = json.loads(cli("analyze", MODEL, "--json").stdout)
    before, after = payload["before"], payload["after"]
    assert after["params"] == 2080 < before["params"] and after["linear_macs"] < before["linear_macs"]
    assert after["op_counts"] == {"Gemm": 1} and before["op_counts"]["PRelu"] == 2


@pytest.mark.parametrize("value", ["1", "0.2", "ninety"])
def test_confidence_outside_its_range_is_a_one_line_error(tmp_path, value):
    result = cli("optimize", MODEL, tmp_path / "o.onnx", "--metric", "top1", "--confidence", value)
    assert_one_line_error(result, 2, "--confidence")
    assert not (tmp_path / "o.onnx").exists()


def test_verify_with_too_few_rows_for_the_bound_says_how_many_it_needs(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32))
    result = cli("verify", MODEL, MODEL, "--inputs", tmp_path / "x.npz", "--metric", "top1", "--confidence", "0.9")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "why: output 'y': at --confidence 0.9, 16 rows cannot show 99% agreement" in result.stdout
    assert "it needs at least 163" in result.stdout
