"""Shape ops between fully connected layers: folded where the feature axis passes through unchanged."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_collapse import optimize
from tests.builders import mlp, run_model


def _between(nodes, consts=(), x_shape=("batch", 8)):
    """mlp() with ``nodes`` (in the text format, reading 'l0', ending in 'l0_s') between the first Gemm and the
    PRelu."""
    model = mlp()
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in consts)
    for k, node in enumerate(nodes):
        model.graph.node.insert(1 + k, onnx.parser.parse_node(node))
    next(n for n in model.graph.node if n.op_type == "PRelu").input[0] = "l0_s"
    onnx.checker.check_model(model)
    return model


def _folds_exactly(model, batch=6):
    out, report = optimize(model)
    assert [f.status for f in report.folds] == ["folded"], report.unfolded
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    x = np.random.default_rng(2).standard_normal((batch, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(out, x=x)[0], run_model(model, x=x)[0], rtol=1e-4, atol=1e-5)


def test_onnxsim_style_reshapes_that_keep_the_features_fold():
    nodes = ["[up] l0_3 = Reshape (l0, to3)", "[down] l0_s = Reshape (l0_3, to2)"]
    _folds_exactly(_between(nodes, [("to3", [-1, 2, 16]), ("to2", [-1, 16])]))


def test_flatten_and_unsqueeze_squeeze_on_2d_features_fold():
    nodes = ["[flat] l0_f = Flatten <axis = 1> (l0)", "[unsq] l0_u = Unsqueeze (l0_f, ax)",
             "[sq] l0_s = Squeeze (l0_u, ax)"]
    _folds_exactly(_between(nodes, [("ax", [0])]))


@pytest.mark.parametrize("nodes,consts,why", [
    (["[r] l0_s = Reshape (l0, to)"], [("to", [-1, 4, 4])], "changes the feature"),
    (["[u] l0_s = Unsqueeze (l0, ax)"], [("ax", [-1])], "on the feature axis"),
])
def test_shape_ops_that_touch_the_feature_axis_end_the_chain_with_the_reason(nodes, consts, why):
    _, report = optimize(_between(nodes, consts), verify=False)
    assert not report.folded and any(why in u.reason for u in report.unfolded)
