"""Options are checked where they are built: the API names the keyword, the CLI names the flag."""

import shutil
import subprocess

import pytest

from onnx_collapse import CollapseError, Options, analyze, optimize, verify
from tests.common import MODELS


@pytest.mark.parametrize("keyword,value,words", [
    ("rank_budget", 1.5, "rank_budget"),
    ("rank_budget", 0.0, "rank_budget"),
    ("slope_tol", -1, "slope_tol"),
    ("slope_tol", float("nan"), "slope_tol"),
    ("atol", float("inf"), "atol"),
    ("metric", "foo", "metric must be one of allclose, top1"),
    ("allocator", "greedy", "allocator"),
    ("low_rank", "some", "low_rank"),
    ("check_n", 0, "check_n"),
    ("max_groups", 0, "max_groups"),
    ("min_agreement", 2.0, "min_agreement"),
    ("ctc_strip", (0,), "ctc_strip must be class indices >= 1"),
    ("ctc_strip", 3, "ctc_strip"),
    ("no_such_option", 1, "unknown option 'no_such_option'"),
])
def test_api_refuses_bad_values_naming_the_keyword(keyword, value, words):
    with pytest.raises(CollapseError, match=words):
        optimize(MODELS / "three_layer.onnx", **{keyword: value})
    if keyword != "no_such_option":
        with pytest.raises(CollapseError, match=keyword):
            Options(**{keyword: value})


def test_budget_and_max_error_exclude_each_other():
    with pytest.raises(CollapseError, match="exclude each other"):
        Options(rank_budget=0.5, max_error=0.1)


def test_api_errors_name_parameters_and_the_cli_renders_them_as_flags():
    from onnx_collapse.cli import with_flags

    with pytest.raises(CollapseError) as caught:
        Options(rank_budget=0.5, max_error=0.1)
    assert str(caught.value) == "rank_budget and max_error exclude each other; give one"
    assert with_flags(caught.value) == "--rank-budget and --max-error exclude each other; give one"
    with pytest.raises(CollapseError) as caught:
        Options(min_agreement=2.0)
    assert with_flags(caught.value) == "--min-agreement must be a fraction in [0, 1], not 2.0"


def test_every_flag_of_the_parameter_table_is_an_option_of_a_command():
    from onnx_collapse.cli import FLAGS, VALUE_FLAGS, cli

    given = {opt for command in cli.commands.values() for p in command.params
             for opt in [*p.opts, *p.secondary_opts]}
    assert set(FLAGS.values()) | set(VALUE_FLAGS.values()) <= given
    from dataclasses import fields
    assert {f.name for f in fields(Options)} - {"verify"} <= set(FLAGS)


def test_analyze_and_verify_check_their_options_too():
    with pytest.raises(CollapseError, match="slope_tol"):
        analyze(MODELS / "three_layer.onnx", slope_tol=-0.1)
    with pytest.raises(CollapseError, match="check_n"):
        verify(MODELS / "three_layer.onnx", MODELS / "three_layer.onnx", check_n=0)


@pytest.mark.slow
def test_cli_names_the_flag_for_a_value_click_lets_through():
    exe = shutil.which("onnx-collapse")
    if exe is None:
        pytest.skip("console script not installed")
    result = subprocess.run([exe, "analyze", str(MODELS / "three_layer.onnx"), "--slope-tol", "nan"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "onnx-collapse: error: --slope-tol must be a finite number >= 0, not nan"]
