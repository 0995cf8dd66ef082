"""Nothing lost, nothing wrongly accepted (second attack, issue 21): the run's data files protected and read
safely, overridable weights in subgraphs, no vacuous comparison, clean refusals, strict JSON."""

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from fuzz import npy_header, zip_bomb  # the fuzz benchmark's hostile .npz builders
from onnx import TensorProto, helper, numpy_helper

from tests.builders import mlp, parsed
from tests.common import EXE, assert_one_line_error, cli

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


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """.npz files of about 500 KB whose array (named x, the model's input, or not_an_input) inflates to 512 MiB."""
    folder = tmp_path_factory.mktemp("bombs")
    return {name: zip_bomb(folder / f"{name}.npz", name, (2**24, 8)) for name in ("x", "not_an_input")}


@pytest.mark.parametrize("flag", ["--inputs", "--calibrate"])
@pytest.mark.parametrize("name", ["x", "not_an_input"])
def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path, bombs, flag, name):
    src = model_file(tmp_path)
    bomb = bombs[name]
    assert bomb.stat().st_size < 2**20
    result = subprocess.run([sys.executable, "-c", PEAK_DRIVER, "optimize", str(src), str(tmp_path / "o.onnx"), flag,
                             str(bomb), "--max-verify-memory", "16M"], capture_output=True, text=True, timeout=120)
    *lines, peak = result.stderr.strip().splitlines()
    result.stderr = "\n".join(lines)
    assert_one_line_error(result, 2, flag, "--max-verify-memory")
    assert int(peak.split()[1]) < 300 * 1024, peak  # KiB: the 512 MiB were not inflated
    assert not (tmp_path / "o.onnx").exists()


# The child's own peak: VmHWM belongs to its address space. (ru_maxrss would not do: Linux carries the
# parent's resident size at fork across execve, so a child of a grown pytest reports the parent's peak.)
PEAK_DRIVER = """
import sys
from onnx_collapse import cli
sys.argv = ["onnx-collapse", *sys.argv[1:]]
try:
    cli.main()
finally:
    hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    sys.stderr.write(f"peak {hwm}\\n")
"""


@pytest.mark.parametrize("flag", ["--inputs", "--calibrate"])
def test_a_header_claiming_a_huge_array_is_a_one_line_error(tmp_path, flag):
    src = model_file(tmp_path)
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy_header((2**40, 8)) + bytes(64))
    assert path.stat().st_size < 400
    result = cli("optimize", src, tmp_path / "o.onnx", flag, path)
    assert_one_line_error(result, 2, flag, "'x'")


# 3. weights a caller can override are never folded, in any graph


def _overridable_weight_in(kind: str) -> onnx.ModelProto:
    """A two-layer chain inside an If branch or a Loop body reading ``w1`` from the main graph, where ``w1``
    is an initializer that is also a graph input (a caller may feed another value)."""
    weights = {"w1": RNG.standard_normal((8, 16)).astype(np.float32),
               "w2": RNG.standard_normal((16, 8)).astype(np.float32)}
    if kind == "If":
        inputs, node = "bool cond, float[3, 8] x", """y = If (cond) <
            then_branch = then () => (float[3, 8] t_y) {
                t_y_h = MatMul (x, w1)
                t_y = MatMul (t_y_h, w2)
            },
            else_branch = else () => (float[3, 8] e_y) { e_y = Neg (x) }
        >"""
    else:
        weights["trip"] = np.array(2, np.int64)
        inputs, node = "float[3, 8] x", """y = Loop (trip, "", x) <
            body = body (int64 i, bool c, float[3, 8] v) => (bool c_out, float[3, 8] v_next) {
                v_next_h = MatMul (v, w1)
                v_next = MatMul (v_next_h, w2)
                c_out = Identity (c)
            }
        >"""
    return parsed(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        main ({inputs}, float[8, 16] w1) => (float[3, 8] y) {{ {node} }}""", weights)  # w1: overridable


@pytest.mark.parametrize("kind", ["If", "Loop"])
def test_a_subgraph_chain_reading_an_overridable_weight_is_not_folded(kind):
    from onnx_collapse import optimize
    from tests.builders import run_model

    model = _overridable_weight_in(kind)
    out, report = optimize(model, verify=False)
    feed = {"x": RNG.standard_normal((3, 8)).astype(np.float32),
            "w1": RNG.standard_normal((8, 16)).astype(np.float32)}
    if kind == "If":
        feed["cond"] = np.array(True)
    np.testing.assert_allclose(run_model(out, **feed)[0], run_model(model, **feed)[0], rtol=1e-4, atol=1e-4)
    assert not any(f.status == "folded" for f in report.folds)


# 4. no vacuous comparison


@pytest.mark.parametrize("where", ["--inputs", "held-out --calibrate rows"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_rows_with_nan_or_inf_are_refused_not_counted_as_agreement(tmp_path, where, value):
    src = model_file(tmp_path, slope=0.6)
    data = rows()
    data["x"][:, 3] = value
    path = tmp_path / "data.npz"
    np.savez(path, **data)
    args = ["--inputs", path] if where == "--inputs" else ["--calibrate", path]
    result = cli("optimize", src, tmp_path / "o.onnx", "--slope-tol", "0.5", *args)
    assert_one_line_error(result, 2, "'x'", "NaN or infinite")
    assert not (tmp_path / "o.onnx").exists()


def _with_output_stage(model: onnx.ModelProto, nodes: list, y: str, shape) -> onnx.ModelProto:
    """``model`` whose output ``y`` (old output renamed ``core``) goes through ``nodes`` first."""
    model = onnx.ModelProto()
    model.CopyFrom(mlp(slope=0.6, kind="leaky"))
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["core" if n == old else n for n in node.output]
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, shape))
    return model


def test_an_output_that_is_nan_everywhere_compares_nothing_and_is_an_error(tmp_path):
    minus = numpy_helper.from_array(np.array(-1.0, np.float32), "minus")
    model = _with_output_stage(None, [helper.make_node("Log", ["minus"], ["nan"]),
                                      helper.make_node("Add", ["core", "nan"], ["y"])], "y", ["n", 4])
    model.graph.initializer.append(minus)
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    result = cli("optimize", src, tmp_path / "o.onnx", "--slope-tol", "0.5")
    assert_one_line_error(result, 2, "'y'", "compared no element")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("shape", ["scalar", "width 1"])
def test_top1_needs_an_axis_with_two_classes(tmp_path, shape):
    if shape == "scalar":
        nodes = [helper.make_node("ReduceSum", ["core"], ["y"], keepdims=0)]
    else:
        nodes = [helper.make_node("ReduceSum", ["core", "axes"], ["y"], keepdims=1)]
    model = _with_output_stage(None, nodes, "y", [] if shape == "scalar" else ["n", 1])
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    data = tmp_path / "rows.npz"
    np.savez(data, **rows(64))
    result = cli("optimize", src, tmp_path / "o.onnx", "--slope-tol", "0.5", "--metric", "top1", "--inputs", data)
    assert_one_line_error(result, 2, "--metric top1", "'y'", "at least 2")
    assert not (tmp_path / "o.onnx").exists()


# 5. shapes come from the model's semantics, never from stale value_info


def test_a_reshape_link_does_not_trust_stale_value_info(tmp_path):
    from onnx_collapse import optimize
    from tests.builders import run_model

    weights = {"w1": RNG.standard_normal((8, 4)).astype(np.float32), "w2": RNG.standard_normal((4, 4)).astype(np.float32),
               "target": np.array([6, 2, 4], np.int64)}
    model = parsed("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 4, 8] x) => (float[3, 4, 4] y) <float[3, 4, 4] h, float[3, 4, 4] r> {
            h = MatMul (x, w1)
            r = Reshape (h, target)
            y = MatMul (r, w2)
        }""", weights)  # h and r's value_info is stale: the Reshape makes r (6, 2, 4)
    x = RNG.standard_normal((3, 4, 8)).astype(np.float32)
    out, _ = optimize(model, verify=False)
    (expected,), (got,) = run_model(model, x=x), run_model(out, x=x)
    assert expected.shape == (6, 2, 4) and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# 6. input the user can give: a one-line error or a working run, never an internal error


def _two_matmuls(x: str, weights: dict[str, np.ndarray], sparse=()) -> onnx.ModelProto:
    """x @ w1 @ w2, ``x`` of type ``x`` (e.g. "float[n, 8]")."""
    model = parsed(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g ({x} x) => (float[n, 4] y) {{
            h = MatMul (x, w1)
            y = MatMul (h, w2)
        }}""", weights)
    model.graph.sparse_initializer.extend(sparse)
    return model


def _weights() -> dict[str, np.ndarray]:
    return {"w1": RNG.standard_normal((8, 16)).astype(np.float32), "w2": RNG.standard_normal((16, 4)).astype(np.float32)}


def test_a_chain_whose_input_is_an_overridable_initializer_folds_and_stays_overridable(tmp_path):
    from tests.builders import run_model

    weights = _weights()
    model = _two_matmuls("float[3, 8]", {**weights, "x": RNG.standard_normal((3, 8)).astype(np.float32)})
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, str(src))
    result = cli("optimize", src, out)
    assert result.returncode == 0, result.stderr
    folded = onnx.load(str(out))
    other = RNG.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(folded, x=other)[0], run_model(model, x=other)[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run_model(folded)[0], run_model(model)[0], rtol=1e-4, atol=1e-4)


def _with_extra_output(kind: str) -> onnx.ModelProto:
    model = mlp()
    y = model.graph.output[0].name
    if kind == "sequence":
        model.graph.node.append(helper.make_node("SequenceConstruct", [y, "x"], ["extra"]))  # 4 and 8 wide
        model.graph.output.append(helper.make_tensor_sequence_value_info("extra", TensorProto.FLOAT, None))
    else:
        model.graph.node.append(helper.make_node("Optional", [y], ["extra"]))
        model.graph.output.append(helper.make_value_info("extra", helper.make_optional_type_proto(
            helper.make_tensor_type_proto(TensorProto.FLOAT, None))))
        model.opset_import[0].version = 18
    return model


@pytest.mark.parametrize("kind", ["sequence", "optional"])
def test_sequence_and_optional_outputs_are_optimized_analyzed_and_verified(tmp_path, kind):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(_with_extra_output(kind), str(src))
    result = cli("optimize", src, out)
    assert result.returncode == 0 and "verification: PASSED" in result.stdout, result.stderr
    onnx.checker.check_model(str(out))
    assert cli("analyze", src).returncode == 0
    assert cli("verify", src, out).returncode == 0


def test_a_sequence_output_of_another_length_fails_verification(tmp_path):
    a, b = _with_extra_output("sequence"), _with_extra_output("sequence")
    b.graph.node[-1].input.append("x")
    onnx.save(a, str(tmp_path / "a.onnx"))
    onnx.save(b, str(tmp_path / "b.onnx"))
    result = cli("verify", tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr


def test_a_sparse_initializer_used_as_a_weight_is_left_alone(tmp_path):
    from tests.builders import run_model

    weights = _weights()
    dense = weights.pop("w1")
    dense[dense < 0.5] = 0
    idx = np.flatnonzero(dense)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(dense.reshape(-1)[idx], "w1"),
                                       numpy_helper.from_array(idx.astype(np.int64), "w1_idx"), [8, 16])
    model = _two_matmuls("float[n, 8]", weights, [sparse])
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, str(src))
    for args in (("optimize", src, out), ("analyze", src)):
        result = cli(*args)
        assert result.returncode == 0 and not result.stderr, result.stderr
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(onnx.load(str(out)), x=x)[0], run_model(model, x=x)[0], rtol=1e-5)


@pytest.mark.parametrize("command", ["optimize", "verify"])
@pytest.mark.parametrize("dim", [2**63, 10**23, 2**63 - 1])
def test_an_input_shape_dim_beyond_int64_is_a_one_line_error(tmp_path, command, dim):
    src = model_file(tmp_path)
    args = [src, tmp_path / "o.onnx"] if command == "optimize" else [src, src]
    result = cli(command, *args, "--input-shape", f"x:{dim}x8")
    assert_one_line_error(result, 2, "x:" if dim > 2**63 - 1 else "memory")
    assert not (tmp_path / "o.onnx").exists()


# 7. strict JSON (RFC 8259) everywhere


def strict_json(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def _schema_validator():
    from importlib import resources

    import jsonschema

    schema = json.loads((resources.files("onnx_collapse") / "schemas" / "report.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def test_json_reports_are_strict_and_say_which_numbers_are_undefined(tmp_path):
    model = mlp(slope=0.6)
    slope = next(t for t in model.graph.initializer if t.name == "s0")
    slope.CopyFrom(numpy_helper.from_array(np.full(tuple(slope.dims), np.nan, np.float32), "s0"))
    src = tmp_path / "nan.onnx"
    onnx.save(model, str(src))
    other = tmp_path / "other.onnx"
    onnx.save(mlp(n_out=5), str(other))
    validator = _schema_validator()
    for args, code in [(("analyze", src, "--json"), 0),
                       (("optimize", src, tmp_path / "o.onnx", "--json", "--report", tmp_path / "r.json"), 0),
                       (("verify", model_file(tmp_path), other, "--json"), 1)]:
        result = cli(*args)
        assert result.returncode == code, result.stderr
        report = strict_json(result.stdout)
        assert report["undefined_numbers"], report
        for entry in report["undefined_numbers"]:
            target = report
            for part in entry["path"].split("/")[1:]:
                target = target[int(part) if isinstance(target, list) else part]
            assert target is None and entry["value"] in ("NaN", "Infinity")
        assert not list(validator.iter_errors(report))
    assert strict_json((tmp_path / "r.json").read_text())["undefined_numbers"]


# 8. a closed stdout (``| head -0``): the output is complete, then a quiet exit with SIGPIPE's status


@pytest.mark.parametrize("as_json", [False, True])
def test_a_closed_stdout_ends_quietly_with_the_broken_pipe_status_after_the_output(tmp_path, as_json):
    src, out = model_file(tmp_path), tmp_path / "o.onnx"
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write fails with EPIPE
    try:
        result = subprocess.run([EXE, "optimize", src, out, *(["--json"] if as_json else [])], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 141 and result.stderr == "", result.stderr
    onnx.checker.check_model(str(out))


# 9. OUT names up to the file system's limit


@pytest.mark.parametrize("external", [False, True])
def test_an_out_name_at_the_file_systems_limit_works(tmp_path, external):
    from tests.test_safety import data_locations, outputs, same_outputs

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    src = tmp_path / "in.onnx"
    onnx.save(mlp(64, 128, 32), str(src))
    out = tmp_path / ("o" * (limit - 5) + ".onnx")
    flags = ["--external-data"] if external else []
    for _ in range(2):  # the second run replaces the first output and its data
        result = cli("optimize", src, out, *flags)
        assert result.returncode == 0, result.stderr
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    assert same_outputs(outputs(out, x), outputs(src, x))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["in.onnx", out.name, *(data_locations(out) if external else [])])
    assert all(len(n.encode()) <= limit for n in names)


# 10. what "exact" means for a factor pair


def _nearly_rank_deficient() -> tuple[onnx.ModelProto, np.ndarray]:
    """16 -> 4 -> 16 whose product has singular values 1e10, 1, 1 and 1e-6: the last is below the float64
    round-off of the first, so the exact factor pair leaves it out; returns the model and that direction."""
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((16, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((16, 4)))
    w1 = (u * np.array([1e5, 1, 1, 1e-3])).astype(np.float32)
    w2 = (np.diag([1e5, 1, 1, 1e-3]) @ v.T).astype(np.float32)
    model = parsed("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[n, 16] x) => (float[n, 16] y) {
            h = MatMul (x, w1)
            y = MatMul (h, w2)
        }""", {"w1": w1, "w2": w2})
    return model, u[:, 3]


def test_an_exact_factor_pair_states_the_bound_it_holds_under(tmp_path):
    from tests.builders import run_model

    model, direction = _nearly_rank_deficient()
    src, out, report_path = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(model, str(src))
    result = cli("optimize", src, out, "--report", report_path)
    assert result.returncode == 0, result.stderr
    (fold,) = json.loads(report_path.read_text())["folds"]
    assert fold["form"] == "factor" and fold["rank"] == 3
    bound = fold["exact_bound"]
    assert 1e-7 < bound < 1e-5  # the left-out singular value, 1e-6
    assert "exact" in result.stdout and f"{bound:.3g}" in result.stdout  # the note says it too
    folded = onnx.load(str(out))
    x = (1e12 * direction[None, :]).astype(np.float32)  # a large input along the left-out direction
    error = np.abs(run_model(folded, x=x)[0] - run_model(model, x=x)[0]).max()
    assert error <= 1.01 * bound * np.linalg.norm(x) + 1e-3 * np.abs(run_model(model, x=x)[0]).max()


# 11. the fuzz benchmark's data-file part, small


def test_fuzzed_data_files_give_a_result_or_a_clean_error_and_stay_unchanged(tmp_path):
    from collections import Counter

    import fuzz

    counts: Counter = Counter()
    fuzz.hostile_data_files(tmp_path, counts, rounds=4, seed=11)
    assert counts["crash"] == 0 and counts["input changed"] == 0, counts
    assert counts["result"] >= 1 and counts["clean error"] >= 30, counts


@pytest.mark.parametrize("header", [b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 8), \x13",
                                    b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, -8), }",
                                    b"{'descr': '|O', 'fortran_order': False, 'shape': (4, 8), }"])
def test_a_malformed_npy_header_in_a_sound_archive_is_a_one_line_error(tmp_path, header):
    src = model_file(tmp_path)
    path = tmp_path / "bad.npz"
    header += b" " * ((-(len(header) + 11)) % 64) + b"\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(128))
    for flag in ("--inputs", "--calibrate"):
        assert_one_line_error(cli("optimize", src, tmp_path / "o.onnx", flag, path), 2, flag, "bad.npz")
