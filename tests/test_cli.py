"""The installed ``onnx-collapse`` console script: exit codes, one-line errors, untouched input, no partial output."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.builders import mlp
from tests.common import EXE, MODELS, assert_one_line_error, cli

pytestmark = pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")


@pytest.fixture
def model_copy(tmp_path) -> Path:
    path = tmp_path / "in.onnx"
    shutil.copy(MODELS / "mlp_prelu_channel.onnx", path)
    return path


def test_optimize_writes_smaller_verified_model_and_prints_table(model_copy, tmp_path):
    before = model_copy.read_bytes()
    out = tmp_path / "out.onnx"
    result = cli("optimize", model_copy, out)
    assert result.returncode == 0, result.stderr
    assert "verification: PASSED" in result.stdout and "parameters" in result.stdout
    assert model_copy.read_bytes() == before
    assert out.stat().st_size < len(before)
    onnx.checker.check_model(str(out))
    assert cli("verify", model_copy, out).returncode == 0


def test_json_and_report_file(model_copy, tmp_path):
    report = tmp_path / "r.json"
    result = cli("optimize", model_copy, tmp_path / "o.onnx", "--json", "--report", report)
    printed = json.loads(result.stdout)
    assert printed == json.loads(report.read_text())
    assert printed["verification"]["passed"] and printed["folds"][0]["status"] == "folded"
    assert printed["after"]["file_bytes"] < printed["before"]["file_bytes"]


def test_analyze_lists_chains_and_reasons():
    result = cli("analyze", MODELS / "no_fold_slope_05.onnx")
    assert result.returncode == 0 and "not within 0.05 of 1" in result.stdout
    result = cli("analyze", MODELS / "bottleneck.onnx", "--json")
    assert json.loads(result.stdout)["folds"][0]["form"] == "factor"


def test_verify_exits_1_when_models_differ(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(mlp(), a)
    onnx.save(mlp(slope=0.5), b)
    result = cli("verify", a, b)
    assert result.returncode == 1 and "FAILED" in result.stdout


def test_missing_file(tmp_path):
    result = cli("optimize", tmp_path / "nope.onnx", tmp_path / "o.onnx")
    assert_one_line_error(result, 2, "nope.onnx", "no such file")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all \x00\xff", "truncated"])
def test_not_onnx_or_truncated(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    data = (MODELS / "three_layer.onnx").read_bytes()
    bad.write_bytes(data[: len(data) // 3] if content == "truncated" else content)
    before = bad.read_bytes()
    result = cli("optimize", bad, tmp_path / "o.onnx")
    assert_one_line_error(result, 2, "bad.onnx")
    assert bad.read_bytes() == before
    assert list(tmp_path.iterdir()) == [bad]  # no partial output, no temp files left


@pytest.mark.parametrize("shape,words", [
    ("nope:1x64", ["'nope'", "not a model input"]),
    ("x:1x", ["bad --input-shape"]),
    ("x:2x3x64", ["rank 3"]),
    ("x:2x65", ["fixed to 64"]),
])
def test_bad_input_shape(model_copy, tmp_path, shape, words):
    result = cli("optimize", model_copy, tmp_path / "o.onnx", "--input-shape", shape)
    assert_one_line_error(result, 2, *words)
    assert not (tmp_path / "o.onnx").exists()


def test_input_shape_sets_dynamic_dim(model_copy, tmp_path):
    result = cli("optimize", model_copy, tmp_path / "o.onnx", "--input-shape", "x:5x64", "--json")
    assert result.returncode == 0, result.stderr


def test_inputs_file(model_copy, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 64), np.float32))
    result = cli("optimize", model_copy, tmp_path / "o.onnx", "--inputs", tmp_path / "d.npz")
    assert result.returncode == 0 and "inputs from d.npz" in result.stdout
    np.savez(tmp_path / "bad.npz", y=np.ones((3, 64), np.float32))
    assert_one_line_error(cli("optimize", model_copy, tmp_path / "o2.onnx", "--inputs", tmp_path / "bad.npz"),
                          2, "no array for input 'x'")


def test_same_path_needs_overwrite(model_copy):
    before = model_copy.read_bytes()
    assert_one_line_error(cli("optimize", model_copy, model_copy), 2, "--overwrite")
    assert model_copy.read_bytes() == before
    result = cli("optimize", model_copy, model_copy, "--overwrite")
    assert result.returncode == 0 and model_copy.stat().st_size < len(before)
    onnx.checker.check_model(str(model_copy))


def test_output_folder_missing(model_copy, tmp_path):
    assert_one_line_error(cli("optimize", model_copy, tmp_path / "no" / "o.onnx"), 2, "does not exist")


def test_checker_failure_is_one_line(tmp_path):
    model = mlp()
    model.graph.node[0].input[1] = "undefined_weight"
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    assert_one_line_error(cli("optimize", path, tmp_path / "o.onnx"), 2, "onnx.checker")


def test_usage_error_exits_2():
    assert cli("optimize").returncode == 2


def test_no_verify_says_it_did_not_check(model_copy, tmp_path):
    result = cli("optimize", model_copy, tmp_path / "o.onnx", "--no-verify")
    assert result.returncode == 0 and "NOT checked" in result.stdout


def test_analyze_spectrum_shows_the_trade_off():
    result = cli("analyze", MODELS / "three_layer.onnx", "--spectrum")
    assert result.returncode == 0 and "max layer error (ALDS)" in result.stdout and "sigma_1" in result.stdout


def test_rank_budget_truncates_only_with_a_user_tolerance(tmp_path):
    strict = cli("optimize", MODELS / "three_layer.onnx", tmp_path / "a.onnx", "--rank-budget", "0.5", "--json")
    payload = json.loads(strict.stdout)
    (fold,) = payload["folds"]  # one row per chain; the undone truncation is among its attempts
    assert (fold["form"], fold["status"]) == ("dense", "folded")
    assert [a["form"] for a in fold["attempts"]] == ["truncated"]
    assert payload["truncation"]["met"] is False and payload["truncation"]["undone"] == 1
    assert payload["truncation"]["needs"][0]["required_atol"] > 0.1
    loose = cli("optimize", MODELS / "three_layer.onnx", tmp_path / "b.onnx", "--rank-budget", "0.5",
                "--atol", "1", "--rtol", "1", "--json")
    (fold,) = json.loads(loose.stdout)["folds"]
    assert fold["form"] == "truncated" and fold["predicted_error"] > 0 and fold["error"]["max_abs"] > 0


def test_budget_and_max_error_exclude_each_other(tmp_path):
    result = cli("optimize", MODELS / "three_layer.onnx", tmp_path / "o.onnx", "--rank-budget", "0.5",
                 "--max-error", "0.1")
    assert_one_line_error(result, 2, "exclude each other")


@pytest.mark.parametrize("args,words", [
    (["optimize", MODELS / "leaky_1.onnx", "o.onnx", "--atol", "-1"], ["--atol"]),
    (["optimize"], ["Missing argument"]),
    (["frobnicate"], ["No such command"]),
])
def test_usage_errors_are_one_line_too(tmp_path, args, words):
    assert_one_line_error(cli(*args, cwd=tmp_path), 2, *words)


def test_a_model_that_fails_in_onnxruntime_gives_one_line_without_onnxruntime_logs(tmp_path):
    model = mlp()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([3, -1], np.int64), "bad_shape"))
    model.graph.node.append(onnx.helper.make_node("Reshape", [model.graph.output[0].name, "bad_shape"], ["y3"]))
    model.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("y3", onnx.TensorProto.FLOAT, [None, None]))
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    result = cli("optimize", path, tmp_path / "out.onnx")  # 2 x 4 outputs cannot be 3 rows
    assert_one_line_error(result, 2, "onnxruntime cannot run the original model")
    assert not (tmp_path / "out.onnx").exists()


def test_a_budget_that_is_not_met_says_so_and_what_it_would_take(tmp_path):
    """The budget case of a new user: every truncation undone at the default tolerance."""
    result = cli("optimize", MODELS / "three_layer.onnx", tmp_path / "o.onnx", "--low-rank", "all",
                 "--rank-budget", "0.5")
    assert result.returncode == 0, result.stderr
    words = " ".join(result.stdout.split())
    assert "--rank-budget 0.5 NOT met: 1 of 1 planned truncation(s) were undone" in words
    assert "--inputs data.npz --metric top1" in words and "needs --atol 0.32" in words
    assert words.count("0 > 3 > 5") == 2  # one row in the fold table, once in the advice


@pytest.mark.parametrize("args,meant", [
    (["in.onnx", "out.onnx"], "did you mean: onnx-collapse optimize in.onnx out.onnx"),
    (["in.onnx"], "did you mean: onnx-collapse analyze in.onnx"),
])
def test_the_onnxsim_habit_gets_the_command_it_meant(tmp_path, args, meant):
    assert_one_line_error(cli(*args, cwd=tmp_path), 2, meant)


def test_every_run_ends_with_its_elapsed_time(model_copy, tmp_path):
    for args in (["optimize", model_copy, tmp_path / "o.onnx"], ["analyze", model_copy],
                 ["verify", model_copy, tmp_path / "o.onnx"]):
        last = cli(*args).stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"done in \d+\.\d s", last), last
    json.loads(cli("analyze", model_copy, "--json").stdout)  # the JSON stays one object


def test_demo_runs_on_the_example_shipped_in_the_package(tmp_path):
    result = cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "$ onnx-collapse analyze" in result.stdout and "verdict:" in result.stdout
    assert "verification: PASSED" in result.stdout and list(tmp_path.iterdir()) == []  # nothing left behind
    kept = cli("demo", tmp_path / "demo.onnx", "--quiet")
    assert kept.returncode == 0 and cli("verify", MODELS / "three_layer.onnx", tmp_path / "demo.onnx").returncode == 0
