"""Verification refuses what it cannot check honestly; runs without low-rank targets or with odd inputs stay clean."""

import numpy as np
import onnx
import pytest
from builders import mlp
from onnx import TensorProto, helper, numpy_helper
from test_cli import EXE, assert_one_line_error, cli

from onnx_collapse import analyze, optimize
from onnx_collapse.allocate import allocate_budget


def _cnn() -> onnx.ModelProto:
    """A model with a Conv and no linear layer: nothing to fold, no low-rank target."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


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
