"""Loading and saving: external data, hostile paths, atomic writes, deterministic output."""

import os

import onnx
import pytest
from builders import mlp

from onnx_collapse import CollapseError, optimize
from onnx_collapse.io import file_size, load_model, save_model


def _save_external(model, path):
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)


def test_external_data_is_read_relative_to_the_model_and_written_beside_the_output(tmp_path, monkeypatch):
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    src_dir.mkdir()
    dst_dir.mkdir()
    _save_external(mlp(64, 128, 32), src_dir / "m.onnx")
    monkeypatch.chdir(tmp_path)  # not the model's folder
    model = load_model(src_dir / "m.onnx")
    out, report = optimize(model)
    save_model(out, dst_dir / "o.onnx", external_data=True)
    assert (dst_dir / "o.onnx.data").is_file()
    written = onnx.load(str(dst_dir / "o.onnx"), load_external_data=False)
    locations = {e.value for t in written.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"o.onnx.data"}
    (src_dir / "m.onnx.data").unlink()  # the output must not depend on the input's data file
    assert report.verification.passed
    load_model(dst_dir / "o.onnx")
    assert file_size(dst_dir / "o.onnx") > (dst_dir / "o.onnx").stat().st_size


def test_external_path_escaping_the_folder_is_refused(tmp_path):
    model = mlp()
    (tmp_path / "secret").write_bytes(b"\0" * 4096)
    sub = tmp_path / "sub"
    sub.mkdir()
    _save_external(model, sub / "m.onnx")
    proto = onnx.load(str(sub / "m.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret"
    onnx.save_model(proto, str(sub / "m.onnx"))
    with pytest.raises(CollapseError, match="escapes the model's folder"):
        load_model(sub / "m.onnx")


def test_missing_external_data_file(tmp_path):
    _save_external(mlp(), tmp_path / "m.onnx")
    os.remove(tmp_path / "m.onnx.data")
    with pytest.raises(CollapseError, match="missing"):
        load_model(tmp_path / "m.onnx")


def test_same_input_gives_byte_identical_output(tmp_path):
    for name in ("a.onnx", "b.onnx"):
        out, _ = optimize(mlp())
        save_model(out, tmp_path / name)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(OSError):
        save_model(mlp(), tmp_path / "o.onnx")
    assert list(tmp_path.iterdir()) == []
