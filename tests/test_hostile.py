"""Hostile and unusual input: a clean one-line error (exit 2) or an untouched pass-through, never a crash."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnx_collapse import CollapseError, analyze, optimize
from tests.builders import mlp, parsed, point_external_data_at, save_external
from tests.common import EXE, MODELS, assert_one_line_error, cli


def _save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _custom_op_model(with_chain: bool):
    model = mlp()
    model.graph.node.insert(0, helper.make_node("Mystery", ["x"], ["x2"], domain="com.example"))
    for node in model.graph.node[1:]:
        node.input[:] = ["x2" if n == "x" else n for n in node.input]
    if not with_chain:
        model.graph.node[2].op_type = "Relu"
        del model.graph.node[2].input[1:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def test_unknown_domain_with_nothing_to_fold_passes_through_untouched(tmp_path):
    src = _save(_custom_op_model(with_chain=False), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    result = cli("optimize", src, out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == src.read_bytes()


def test_unknown_domain_with_a_chain_cannot_be_verified_and_says_so(tmp_path):
    src = _save(_custom_op_model(with_chain=True), tmp_path / "m.onnx")
    result = cli("optimize", src, tmp_path / "o.onnx")
    assert_one_line_error(result, 2, "onnxruntime cannot load", "Mystery")
    assert not (tmp_path / "o.onnx").exists()
    assert cli("optimize", src, tmp_path / "o.onnx", "--no-verify").returncode == 0


def _matmul_model(weights: dict, x_type: str = "float", dequantize: bool = False) -> onnx.ModelProto:
    """x @ w @ w_2, x and y of ``x_type``; with ``dequantize``, w = DequantizeLinear(wq, scale)."""
    return parsed(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g ({x_type}[n, 4] x) => ({x_type}[n, 4] y) {{
            {"w = DequantizeLinear (wq, scale)" if dequantize else ""}
            h = MatMul (x, w)
            y = MatMul (h, w_2)
        }}""", weights)


@pytest.mark.parametrize("kind", ["qdq", "int32", "bfloat16"])
def test_quantized_integer_and_bfloat16_weights_are_left_alone(kind):
    rng = np.random.default_rng(0)
    if kind == "qdq":
        model = _matmul_model({"wq": rng.integers(-8, 8, (4, 4)).astype(np.int8), "scale": np.array(0.1, np.float32),
                               "w_2": rng.standard_normal((4, 4)).astype(np.float32)}, dequantize=True)
    elif kind == "int32":
        model = _matmul_model({n: rng.integers(-3, 3, (4, 4)).astype(np.int32) for n in ("w", "w_2")}, "int32")
    else:
        model = _matmul_model({n: helper.make_tensor(n, TensorProto.BFLOAT16, [4, 4], rng.integers(0, 2**15, 16).tolist(),
                                                     raw=False) for n in ("w", "w_2")}, "bfloat16")
    out, report = optimize(model, verify=False)
    assert not report.folded and out.SerializeToString() == model.SerializeToString()


def test_empty_graph_and_zero_sized_dims():
    empty = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]> empty (float[2] x) => (float[2] x) {}')
    out, report = optimize(empty)
    assert out.SerializeToString() == empty.SerializeToString() and not report.folds
    with pytest.raises(CollapseError, match="no elements"):  # verification would compare nothing
        optimize(mlp(), input_shapes={"x": (0, 8)})


def test_missing_or_escaping_external_data_is_a_one_line_error(tmp_path):
    save_external(mlp(64, 128, 32), tmp_path / "m.onnx")
    (tmp_path / "m.onnx.data").rename(tmp_path / "elsewhere.data")
    assert_one_line_error(cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx"), 2, "missing")
    point_external_data_at(tmp_path / "m.onnx", "/etc/passwd")
    assert_one_line_error(cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx"), 2, "escapes")


def test_truncated_external_data_is_a_one_line_error(tmp_path):
    save_external(mlp(64, 128, 32), tmp_path / "m.onnx")
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    assert_one_line_error(cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx"), 2, "too short")


def test_same_options_give_byte_identical_files(tmp_path):
    for name in ("a.onnx", "b.onnx"):
        assert cli("optimize", MODELS / "bottleneck.onnx", tmp_path / name).returncode == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


SEEDS = sorted(MODELS.glob("*.onnx"))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(SEEDS) - 1), edits=st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "insert", "zero"]), st.floats(0, 1), st.integers(0, 255)),
    min_size=1, max_size=4))
def test_fuzzed_models_give_a_verified_model_or_a_clean_error(tmp_path_factory, which, edits):
    data = bytearray(SEEDS[which].read_bytes())
    for kind, where, value in edits:
        at = min(int(where * len(data)), max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[at] ^= value or 1
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = bytes([value])
        elif data:
            data[at] = 0
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "m.onnx"
    path.write_bytes(bytes(data))
    for call in (lambda: analyze(path), lambda: optimize(path, output=folder / "o.onnx")):
        try:
            result = call()
        except CollapseError as exc:
            assert "\n" not in str(exc)
            continue
        if isinstance(result, tuple):
            report = result[1]
            assert report.verification is None or report.verification.passed
            assert (folder / "o.onnx").exists()
    assert path.read_bytes() == bytes(data)
    shutil.rmtree(folder)


@pytest.mark.skipif(EXE is None, reason="console script not installed")
def test_fuzzed_file_through_the_cli_never_prints_a_traceback(tmp_path):
    data = bytearray((MODELS / "three_layer.onnx").read_bytes())
    rng = np.random.default_rng(7)
    for trial in range(15):
        mutated = bytearray(data)
        for at in rng.integers(0, len(mutated), size=3):
            mutated[at] ^= int(rng.integers(1, 256))
        path = tmp_path / f"m{trial}.onnx"
        path.write_bytes(bytes(mutated))
        result = cli("optimize", path, tmp_path / f"o{trial}.onnx")
        assert result.returncode in (0, 1, 2) and "Traceback" not in result.stderr, result.stderr
        if result.returncode == 2:
            assert len(result.stderr.strip().splitlines()) == 1
            assert not (tmp_path / f"o{trial}.onnx").exists()


def test_invalid_utf8_names_and_unknown_tensor_types_are_clean_errors(tmp_path):
    model = mlp()
    raw = bytearray(model.SerializeToString())
    name = b"fc0"
    at = raw.index(name)
    raw[at + 1] = 0xF1  # "f\xf1" + "0": not UTF-8
    (tmp_path / "names.onnx").write_bytes(bytes(raw))
    with pytest.raises(CollapseError, match="not UTF-8"):
        optimize(tmp_path / "names.onnx")
    model = mlp()
    slope = next(t for t in model.graph.initializer if t.name == "s0")
    slope.data_type = 40  # no such type
    onnx.save(model, str(tmp_path / "types.onnx"))
    with pytest.raises(CollapseError):
        optimize(tmp_path / "types.onnx")
