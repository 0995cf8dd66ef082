"""Verification refuses what it cannot check honestly; runs without low-rank targets or with odd inputs stay clean."""


import numpy as np
import onnx
import pytest
from measure import run_measured
from onnx import TensorProto, helper, numpy_helper

from onnx_collapse import CollapseError, analyze, optimize
from onnx_collapse.allocate import allocate_budget
from tests.builders import ActSpec, ChainSpec, LayerSpec, build, mlp, parsed, save_external
from tests.common import EXE, MODELS, assert_one_line_error, cli


def _cnn() -> onnx.ModelProto:
    """A model with only a depthwise Conv (left alone): nothing to fold, no low-rank target."""
    w = np.random.default_rng(0).standard_normal((3, 1, 3, 3)).astype(np.float32)
    return parsed("""
        <ir_version: 8, opset_import: ["" : 17]>
        cnn (float[1, 3, 8, 8] x) => (float[1, 3, 6, 6] y) { [conv] y = Conv <group = 3> (x, w) }""", {"w": w})


@pytest.mark.parametrize("low_rank", ["all", "collapsed"])
@pytest.mark.parametrize("limit", [{"rank_budget": 0.5}, {"max_error": 0.1}])
def test_low_rank_without_targets_notes_it_and_leaves_the_model(low_rank, limit):
    model = _cnn()
    out, report = optimize(model, low_rank=low_rank, **limit)
    assert out.SerializeToString() == model.SerializeToString()
    assert not report.folds and any("no low-rank target" in n for n in report.notes)


@pytest.mark.skipif(EXE is None, reason="console script not installed")
def test_low_rank_without_targets_through_the_cli(tmp_path):
    onnx.save(_cnn(), tmp_path / "cnn.onnx")
    for limit in (["--rank-budget", "0.5"], ["--max-error", "0.1"]):
        result = cli("optimize", tmp_path / "cnn.onnx", tmp_path / "o.onnx", "--low-rank", "all", *limit)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert "no low-rank target" in result.stdout
    result = cli("analyze", tmp_path / "cnn.onnx", "--spectrum", "--low-rank", "all")
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_analyze_spectrum_of_a_model_without_targets():
    assert analyze(_cnn(), low_rank="all").spectra == []



def test_budget_allocation_over_no_layers_is_empty():
    assert allocate_budget([], 0.5) == []


def test_inputs_with_no_elements_are_refused():
    with pytest.raises(CollapseError, match="input 'x' has no elements"):
        optimize(mlp(slope=0.5), slope_tol=0.6, input_shapes={"x": (0, 8)})  # a fold that fails on real inputs
    with pytest.raises(CollapseError, match="input 'x' has no elements"):
        optimize(mlp(), inputs={"x": np.ones((3, 0), np.float32)})


@pytest.mark.skipif(EXE is None, reason="console script not installed")
def test_empty_input_shape_or_npz_is_a_one_line_error(tmp_path):
    onnx.save(mlp(slope=0.5), tmp_path / "m.onnx")
    result = cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx", "--slope-tol", "0.6", "--input-shape", "x:0x8")
    assert_one_line_error(result, 2, "'x'", "no elements")
    np.savez(tmp_path / "empty.npz", x=np.ones((0, 8), np.float32))
    result = cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx", "--slope-tol", "0.6", "--inputs",
                 tmp_path / "empty.npz")
    assert_one_line_error(result, 2, "'x'", "no elements")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.skipif(EXE is None, reason="console script not installed")
def test_float64_npz_is_cast_with_a_note_when_it_fits(tmp_path):
    onnx.save(mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((3, 8)))
    result = cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx", "--inputs", tmp_path / "d.npz")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "x cast from float64 to float32" in result.stdout and "PASSED" in result.stdout
    np.savez(tmp_path / "huge.npz", x=np.full((3, 8), 1e300))
    result = cli("optimize", tmp_path / "m.onnx", tmp_path / "o2.onnx", "--inputs", tmp_path / "huge.npz")
    assert_one_line_error(result, 2, "'x'", "float64", "float32", "astype")


@pytest.mark.skipif(EXE is None, reason="console script not installed")
def test_positional_npz_names_what_it_found_and_what_the_model_expects(tmp_path):
    onnx.save(mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", np.ones((3, 8), np.float32))
    result = cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx", "--inputs", tmp_path / "d.npz")
    assert_one_line_error(result, 2, "no array for input 'x'", "arr_0", "np.savez")


def _wide_input_model(rows: int) -> onnx.ModelProto:
    """A small foldable model whose fixed input shape (rows x rows x 8) makes verification huge."""
    model = mlp(op="matmul")
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, rows, 8]))
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    return model


def test_verification_memory_is_estimated_and_refused_past_the_limit():
    model = _wide_input_model(1024)  # 32 MiB per input set, more in intermediates
    with pytest.raises(CollapseError, match=r"input 'x' of shape 1024x1024x8.*input_shapes.*inputs"):
        optimize(model, max_verify_memory=100 * 2**20)
    _, report = optimize(_wide_input_model(16), max_verify_memory=100 * 2**20)
    assert report.verification.passed


@pytest.mark.skipif(EXE is None, reason="console script not installed")
def test_huge_declared_input_is_refused_quickly_in_little_memory(tmp_path):
    onnx.save(_wide_input_model(2**20), tmp_path / "m.onnx")  # 32 TiB per input set
    result = cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx")
    assert_one_line_error(result, 2, "'x'", "--input-shape", "--inputs", "--max-verify-memory")
    code, peak, seconds = run_measured(EXE, "optimize", tmp_path / "m.onnx", tmp_path / "o.onnx", timeout=60)
    assert code == 2 and peak < 400 * 2**20
    onnx.save(_wide_input_model(64), tmp_path / "small.onnx")
    result = cli("optimize", tmp_path / "small.onnx", tmp_path / "o.onnx", "--max-verify-memory", "1K")
    assert_one_line_error(result, 2, "1.0 KB")
    result = cli("optimize", tmp_path / "small.onnx", tmp_path / "o.onnx", "--max-verify-memory", "1G")
    assert result.returncode == 0, result.stderr


def _overflowing_fold() -> onnx.ModelProto:
    """A float16 chain whose folded weights exceed float16's range (the fold is skipped)."""
    model = build(ChainSpec(8, [LayerSpec(16), LayerSpec(4)], [ActSpec()], dtype=np.float16))
    for tensor in model.graph.initializer:
        if tensor.name in ("w0", "w1"):
            tensor.CopyFrom(numpy_helper.from_array(np.full(tuple(tensor.dims), 250, np.float16), tensor.name))
    return model


def onnx_warning_for_unknown_key() -> str:
    """What the installed onnx warns about an unknown external-data key ("" where it does not: onnx 1.19)."""
    import warnings

    tensor = onnx.TensorProto(name="t", data_type=onnx.TensorProto.FLOAT, dims=[1])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="x")
    tensor.external_data.add(key="sha256", value="0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnx.external_data_helper.ExternalDataInfo(tensor)
    return " ".join(str(w.message) for w in caught)


@pytest.mark.skipif(EXE is None, reason="console script not installed")
@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.onnx")) + ["overflow", "external_keys"])
def test_successful_runs_print_nothing_on_stderr(tmp_path, name):
    if name == "overflow":
        source = tmp_path / "m.onnx"
        onnx.save(_overflowing_fold(), source)
    elif name == "external_keys":
        source = tmp_path / "m.onnx"
        save_external(mlp(64, 128, 32), source)
        model = onnx.load(str(source), load_external_data=False)
        model.graph.initializer[0].external_data.add(key="sha256", value="0")
        onnx.save(model, str(source))
    else:
        source = MODELS / name
    result = cli("optimize", source, tmp_path / "o.onnx")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    if name == "overflow":
        assert "exceed the range of float16" in result.stdout
    if name == "external_keys" and "Ignoring unknown external data key" in onnx_warning_for_unknown_key():
        assert "note: warning: Ignoring unknown external data key(s) ['sha256']" in result.stdout
