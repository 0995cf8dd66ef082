"""A third hostile pass over the command line (session 2026-12-07): outputs that are links into /dev or
/proc, special files as the input model, file names that are not UTF-8 or name a folder, a candidate whose
output changes dtype, big-endian data files, and an interrupt while the command line loads."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.builders import mlp
from tests.common import EXE, assert_one_line_error, cli

pytestmark = pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")


def model_file(folder: Path, name: str = "in.onnx") -> Path:
    path = folder / name
    onnx.save(mlp(slope=0.98), str(path))
    return path


# 1. an output or report that is a link into /proc or /dev is refused, the link left as it was


@pytest.mark.parametrize("role", ["OUT", "--report"])
def test_output_linked_to_the_process_stdout_is_refused_and_the_link_kept(tmp_path, role):
    src = model_file(tmp_path)
    stdout_link = tmp_path / "mystdout"
    stdout_link.symlink_to("/proc/self/fd/1")
    out, report = (stdout_link, []) if role == "OUT" else (tmp_path / "o.onnx", ["--report", stdout_link])
    captured = tmp_path / "captured.txt"
    with open(captured, "w") as sink:  # the link resolves to a regular file here, as with `> file`
        result = subprocess.run([EXE, "optimize", str(src), str(out), *map(str, report)], stdout=sink,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert_one_line_error(result, 2, str(stdout_link), "/proc/self/fd/1", "device or process file")
    assert stdout_link.is_symlink() and os.readlink(stdout_link) == "/proc/self/fd/1"
    assert not (tmp_path / "o.onnx").exists()


def test_output_in_a_folder_linked_into_proc_is_refused(tmp_path):
    src = model_file(tmp_path)
    (tmp_path / "fds").symlink_to("/proc/self/fd")
    assert_one_line_error(cli("optimize", src, tmp_path / "fds" / "1"), 2, "device or process file")


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable /dev/shm here")
def test_an_output_in_dev_shm_is_written_like_any_other(tmp_path):
    src = model_file(tmp_path)
    folder = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        assert cli("optimize", src, folder / "o.onnx").returncode == 0
        onnx.checker.check_model(str(folder / "o.onnx"))
    finally:
        shutil.rmtree(folder)


def test_output_in_dev_is_refused_before_any_work(tmp_path):
    src = model_file(tmp_path)
    assert_one_line_error(cli("optimize", src, "/dev/stdout"), 2, "'/dev/stdout' is", "device or process file")
    assert os.path.islink("/dev/stdout") or not os.path.exists("/dev/stdout")


# 2. a special file as the input model or the reference: a one-line error, not a read that never ends


@pytest.mark.parametrize("role", ["IN", "--reference"])
def test_fifo_as_a_model_is_refused_without_reading_it(tmp_path, role):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    src = fifo if role == "IN" else model_file(tmp_path)
    extra = [] if role == "IN" else ["--reference", fifo]
    result = cli("optimize", src, tmp_path / "o.onnx", *extra)  # cli's timeout: a blocking read fails the test
    assert_one_line_error(result, 2, "fifo", "not a file")
    assert not (tmp_path / "o.onnx").exists()


def test_character_device_as_the_input_model_is_refused(tmp_path):
    assert_one_line_error(cli("optimize", "/dev/zero", tmp_path / "o.onnx"), 2, "/dev/zero", "not a file")


# 3. file names that onnx cannot take, or that name a folder


def test_file_name_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    odd = os.fsdecode(b"bad\xff.onnx")
    onnx.save(mlp(), os.path.join(str(tmp_path), odd))
    assert_one_line_error(cli("optimize", os.path.join(str(tmp_path), odd), tmp_path / "o.onnx"), 2,
                          "not a valid UTF-8 file name")
    src = model_file(tmp_path)
    assert_one_line_error(cli("optimize", src, os.path.join(str(tmp_path), os.fsdecode(b"o\xfe.onnx"))), 2,
                          "not a valid UTF-8 file name")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isascii()) == ["in.onnx"]


@pytest.mark.parametrize("role", ["OUT", "--report"])
def test_output_path_ending_in_a_separator_is_refused(tmp_path, role):
    src = model_file(tmp_path)
    out, report = (f"{tmp_path}/new.onnx/", []) if role == "OUT" else (tmp_path / "o.onnx", ["--report", f"{tmp_path}/r.json/"])
    assert_one_line_error(cli("optimize", src, out, *report), 2, "names a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


# 4. a candidate whose output changes dtype fails verification, however close its values


def _two_outputs(double: bool) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["n"])]
    nodes.append(helper.make_node("Cast", ["n"], ["b"], to=TensorProto.DOUBLE) if double
                 else helper.make_node("Identity", ["n"], ["b"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 4]),
                               helper.make_tensor_value_info("b", TensorProto.DOUBLE if double else TensorProto.FLOAT,
                                                             [2, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_verify_fails_a_candidate_whose_output_changes_dtype(tmp_path):
    onnx.save(_two_outputs(False), str(tmp_path / "a.onnx"))
    onnx.save(_two_outputs(True), str(tmp_path / "b.onnx"))
    result = cli("verify", tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout and "'b' is float32" in result.stdout


# 5. data files stored big-endian are read as the numbers they hold


def test_big_endian_calibration_rows_fit_like_native_ones(tmp_path):
    src = model_file(tmp_path)
    rows = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    np.savez(tmp_path / "native.npz", x=rows)
    np.savez(tmp_path / "big.npz", x=rows.astype(">f4"))
    for name in ("native", "big"):
        result = cli("optimize", src, tmp_path / f"{name}.onnx", "--calibrate", tmp_path / f"{name}.npz")
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "native.onnx").read_bytes() == (tmp_path / "big.onnx").read_bytes()


# 6. Ctrl-C while the command line's modules load: one line, exit 130


def test_interrupt_while_the_command_line_loads_ends_in_one_line():
    hook = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def interrupted(name, *args, **kw):\n"
            "    if name == 'cli' or name.endswith('.cli'):\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *args, **kw)\n"
            "builtins.__import__ = interrupted\n"
            "from onnx_collapse.__main__ import main\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", hook], capture_output=True, text=True, timeout=60)
    assert result.returncode == 130 and result.stderr == "onnx-collapse: aborted\n", result.stderr


def test_the_command_line_loads_without_onnx():
    # the progress display shows "starting" before onnx and onnxruntime load (seconds on a busy machine)
    code = "import sys, onnx_collapse.cli; print(sorted({'onnx', 'onnxruntime'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
