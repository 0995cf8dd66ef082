"""Nothing lost, nothing wrongly accepted (second attack, issue 21): the run's data files protected and read
safely, overridable weights in subgraphs, no vacuous comparison, clean refusals, strict JSON."""

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import mlp
from test_cli import EXE, assert_one_line_error, cli

pytestmark = pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")
RNG = np.random.default_rng(7)


def model_file(folder: Path, slope: float = 1.0, name: str = "in.onnx") -> Path:
    path = folder / name
    onnx.save(mlp(slope=slope), str(path))
    return path


def rows(n: int = 20) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((n, 8)).astype(np.float32)}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def link(how: str, target: Path, path: Path) -> Path:
    (path.symlink_to if how == "symlink" else path.hardlink_to)(target)
    return path


# 1. the run's data files are protected like the model


@pytest.mark.parametrize("flag", ["--inputs", "--calibrate"])
@pytest.mark.parametrize("how", ["same name", "symlink", "hard link"])
@pytest.mark.parametrize("role", ["OUT", "--report"])
def test_output_or_report_that_is_a_data_file_of_the_run_is_refused(tmp_path, flag, how, role):
    src = model_file(tmp_path, slope=0.98)
    data = tmp_path / "data.npz"
    np.savez(data, **rows())
    target = data if how == "same name" else link(how, data, tmp_path / "alias.npz")
    out, report = (target, []) if role == "OUT" else (tmp_path / "o.onnx", ["--report", target])
    before = snapshot(tmp_path)
    result = cli("optimize", src, out, flag, target, *report)
    assert_one_line_error(result, 2, "output" if role == "OUT" else role, str(target), f"the {flag} file")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("how", ["symlink", "hard link"])
def test_calibrate_and_inputs_naming_one_file_through_a_link_are_refused(tmp_path, how):
    src = model_file(tmp_path, slope=0.9)
    data = tmp_path / "cal.npz"
    np.savez(data, **rows())
    alias = link(how, data, tmp_path / "alias.npz")
    result = cli("optimize", src, tmp_path / "o.onnx", "--calibrate", data, "--inputs", alias)
    assert_one_line_error(result, 2, "--inputs", "--calibrate", "same file")
    assert not (tmp_path / "o.onnx").exists()


# 2. reading a data file: regular files only, declared sizes checked before anything is inflated


@pytest.mark.parametrize("flag", ["--inputs", "--calibrate"])
def test_a_fifo_as_a_data_file_is_refused_without_blocking(tmp_path, flag):
    src = model_file(tmp_path)
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    result = cli("optimize", src, tmp_path / "o.onnx", flag, fifo)
    assert_one_line_error(result, 2, flag, "not a regular file")


@pytest.mark.parametrize("flag", ["--inputs", "--calibrate"])
def test_a_npy_file_as_a_data_file_is_a_one_line_error(tmp_path, flag):
    src = model_file(tmp_path)
    path = tmp_path / "x.npy"
    np.save(path, rows()["x"])
    result = cli("optimize", src, tmp_path / "o.onnx", flag, path)
    assert_one_line_error(result, 2, flag, ".npy", "np.savez")


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    text = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    text += b" " * ((-(len(text) + 11)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def zip_bomb(path: Path, name: str, shape: tuple[int, ...]) -> Path:
    """An .npz whose member ``name`` declares ``shape`` float32 and holds that many zero bytes, deflated."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open(name + ".npy", "w", force_zip64=True) as member:
        member.write(_npy_header(shape))
        chunk = bytes(2**22)
        left = int(np.prod(shape)) * 4
        while left > 0:
            member.write(chunk[:min(left, len(chunk))])
            left -= len(chunk)
    return path


@pytest.mark.parametrize("flag", ["--inputs", "--calibrate"])
@pytest.mark.parametrize("name", ["x", "not_an_input"])
def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path, flag, name):
    src = model_file(tmp_path)
    bomb = zip_bomb(tmp_path / "bomb.npz", name, (2**25, 8))  # 1 GiB inflated, about 1 MB on disk
    assert bomb.stat().st_size < 2**21
    result = cli("optimize", src, tmp_path / "o.onnx", flag, bomb, "--max-verify-memory", "16M")
    assert_one_line_error(result, 2, flag, "--max-verify-memory")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("flag", ["--inputs", "--calibrate"])
def test_a_header_claiming_a_huge_array_is_a_one_line_error(tmp_path, flag):
    src = model_file(tmp_path)
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", _npy_header((2**40, 8)) + bytes(64))
    assert path.stat().st_size < 400
    result = cli("optimize", src, tmp_path / "o.onnx", flag, path)
    assert_one_line_error(result, 2, flag, "'x'")
