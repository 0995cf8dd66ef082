"""Loading and saving: external data, hostile paths, atomic writes, deterministic output."""

import os
import re

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_collapse import CollapseError, optimize, verify
from onnx_collapse.io import all_tensors, file_size, load_model, save_model, uses_external
from tests.builders import mlp, point_external_data_at, save_external


def test_external_data_is_read_relative_to_the_model_and_written_beside_the_output(tmp_path, monkeypatch):
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    src_dir.mkdir()
    dst_dir.mkdir()
    save_external(mlp(64, 128, 32), src_dir / "m.onnx")
    before = {p.name: p.read_bytes() for p in src_dir.iterdir()}
    monkeypatch.chdir(tmp_path)  # not the model's folder
    out, report = optimize(src_dir / "m.onnx", output=dst_dir / "o.onnx")
    assert report.verification.passed and report.folded
    assert {p.name: p.read_bytes() for p in src_dir.iterdir()} == before
    written = onnx.load(str(dst_dir / "o.onnx"), load_external_data=False)
    locations = {e.value for t in written.graph.initializer for e in t.external_data if e.key == "location"}
    (data_name,) = locations  # a fresh name per write: OUT.<12 hex>.data
    assert re.fullmatch(r"o\.onnx\.[0-9a-f]{12}\.data", data_name)
    assert sorted(p.name for p in dst_dir.iterdir()) == ["o.onnx", data_name]
    (src_dir / "m.onnx.data").unlink()  # the output must not depend on the input's data file
    load_model(dst_dir / "o.onnx")
    assert file_size(dst_dir / "o.onnx") > (dst_dir / "o.onnx").stat().st_size
    assert verify(str(dst_dir / "o.onnx"), mlp(64, 128, 32)).passed


def test_external_model_as_modelproto_is_refused_with_advice(tmp_path):
    save_external(mlp(), tmp_path / "m.onnx")
    with pytest.raises(CollapseError, match="pass its path"):
        optimize(onnx.load(str(tmp_path / "m.onnx"), load_external_data=False))


def test_path_input_without_output_returns_a_self_contained_model(tmp_path):
    save_external(mlp(64, 128, 32), tmp_path / "m.onnx")
    out, _ = optimize(tmp_path / "m.onnx")
    assert not uses_external(out)
    onnx.checker.check_model(out)


def test_external_path_escaping_the_folder_is_refused(tmp_path):
    model = mlp()
    (tmp_path / "secret").write_bytes(b"\0" * 4096)
    sub = tmp_path / "sub"
    sub.mkdir()
    save_external(model, sub / "m.onnx")
    point_external_data_at(sub / "m.onnx", "../secret")
    with pytest.raises(CollapseError, match="escapes the model's folder"):
        load_model(sub / "m.onnx")


def test_missing_external_data_file(tmp_path):
    save_external(mlp(), tmp_path / "m.onnx")
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

    monkeypatch.setattr("onnx_collapse.io.write_model", boom)
    with pytest.raises(CollapseError, match="o.onnx.*disk full"):
        save_model(mlp(), tmp_path / "o.onnx")
    assert list(tmp_path.iterdir()) == []


def test_all_tensors_finds_weights_in_subgraphs_functions_and_sparse_tensors_in_a_fixed_order():
    model = onnx.parser.parse_model('''
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x, bool c) => (float[2] y)
        <float[2] w = {1.0, 2.0}>
        {
            k = Constant <value = float[2] {3.0, 4.0}> ()
            y = If (c) <
                then_branch = then_g () => (float[2] t) <float[2] wt = {5.0, 6.0}> { t = Add(x, wt) },
                else_branch = else_g () => (float[2] e) { e = local.scaled(x) }
            >
        }
        <domain: "local", opset_import: ["" : 17]>
        scaled (a) => (b) {
            s = Constant <value = float[2] {7.0, 8.0}> ()
            b = Mul(a, s)
        }
    ''')
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([9.0], np.float32), "sp"),
        numpy_helper.from_array(np.array([1], np.int64), "sp_i"), [2]))
    # initializers (the graph's, then its subgraphs'), tensor attributes (the graph's, then functions'), sparse
    assert [numpy_helper.to_array(t).tolist() for t in all_tensors(model)] == [
        [1.0, 2.0], [5.0, 6.0], [3.0, 4.0], [7.0, 8.0], [9.0], [1]]
