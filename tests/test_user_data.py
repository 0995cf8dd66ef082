"""Errors from a user's data files (--inputs, --calibrate) name the option and what the model expects;
verify says why outputs could not be compared. Real CLI runs on real files."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from tests.common import MODELS

EXE = shutil.which("onnx-collapse")
pytestmark = pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")
MODEL = MODELS / "three_layer.onnx"
EXPECTS = "the model expects x: float32 [batch, 64]"  # three_layer's one input, as torch exported it


def cli(*args):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=120)


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def data_file(tmp_path, kind: str):
    path = tmp_path / f"{kind}.npz"
    if kind == "wrong shape":
        np.savez(path, x=np.ones((3, 63), np.float32))
    elif kind == "wrong rank":
        np.savez(path, x=np.ones((3, 8, 8), np.float32))
    elif kind == "wrong name":
        np.savez(path, y=np.ones((3, 64), np.float32))
    elif kind == "text":
        path.write_text("1.0, 2.0, 3.0\n")
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ones((3, 64), np.float32))
    elif kind == "objects":
        np.savez(path, x=np.array([{"a": 1}], dtype=object))
    return path


@pytest.mark.parametrize("option", ["--inputs", "--calibrate"])
@pytest.mark.parametrize("kind,words", [
    ("wrong shape", ["array 'x' has shape 3x63", "dim 1 is 63, the input's is 64", EXPECTS]),
    ("wrong rank", ["array 'x' has shape 3x8x8", "rank 3, the input has rank 2", EXPECTS]),
    ("wrong name", ["has no array for input 'x' (it has y", EXPECTS, "np.savez(path, x=...)"]),
    ("text", ["is not an .npz archive", "np.savez(path, x=array)"]),
    ("npy", ["is a .npy file (one unnamed array)", "np.savez(path, x=...)"]),
    ("objects", ["holds Python objects, which are not read (no pickles)"]),
])
def test_a_bad_data_file_names_the_option_and_what_the_model_expects(tmp_path, option, kind, words):
    path = data_file(tmp_path, kind)
    line = one_line_error(cli("optimize", MODEL, tmp_path / "o.onnx", option, path))
    assert line.startswith(f"onnx-collapse: error: {option} '{path}'"), line
    for word in words:
        assert word in line, line
    assert "allow_pickle" not in line and "ONNXRuntimeError" not in line
    assert not (tmp_path / "o.onnx").exists()


def test_verify_names_the_option_for_bad_inputs_too(tmp_path):
    line = one_line_error(cli("verify", MODEL, MODEL, "--inputs", data_file(tmp_path, "wrong shape")))
    assert "--inputs" in line and EXPECTS in line and "ONNXRuntimeError" not in line


def test_verify_says_which_outputs_differ_in_shape_and_why_it_failed():
    other = MODELS / "leaky_1.onnx"  # same input, 10 outputs instead of 32
    result = cli("verify", MODEL, other)
    assert result.returncode == 1 and "verification: FAILED" in result.stdout
    assert "why: output 'y' has shape 2x32 in 'three_layer.onnx' but 2x10 in 'leaky_1.onnx'" in result.stdout
    payload = json.loads(cli("verify", MODEL, other, "--json").stdout.replace("Infinity", "1e999"))
    assert payload["problems"] == ["output 'y' has shape 2x32 in 'three_layer.onnx' but 2x10 in 'leaky_1.onnx'"]
    assert json.loads(cli("verify", MODEL, MODEL, "--json").stdout)["problems"] == []
