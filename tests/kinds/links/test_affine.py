import numpy as np
import onnx
import pytest

from onnx_collapse import optimize
from tests.builders import mlp, run_model


def _with_link(op: str, value: np.ndarray, data_first: bool = True) -> onnx.ModelProto:
    """mlp() with ``l0 <op> c`` (or ``c <op> l0``) between the first Gemm and the PRelu."""
    model = mlp()
    model.graph.initializer.append(onnx.numpy_helper.from_array(value.astype(np.float32), "c"))
    inputs = ["l0", "c"] if data_first else ["c", "l0"]
    model.graph.node.insert(1, onnx.helper.make_node(op, inputs, ["l0_affine"], name="affine"))
    next(n for n in model.graph.node if n.op_type == "PRelu").input[0] = "l0_affine"
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("op,data_first", [("Mul", True), ("Mul", False), ("Add", True), ("Add", False),
                                           ("Sub", True), ("Sub", False), ("Div", True)])
@pytest.mark.parametrize("shape", [(16,), (1, 16), (1,), ()])
def test_constant_elementwise_link_folds_exactly(op, data_first, shape):
    value = np.random.default_rng(3).uniform(0.5, 2.0, size=shape)
    model = _with_link(op, value, data_first)
    out, report = optimize(model)
    assert [f.status for f in report.folds] == ["folded"] and report.verification.passed
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    x = np.random.default_rng(4).standard_normal((7, 8)).astype(np.float32)  # a batch the verifier did not use
    np.testing.assert_allclose(run_model(out, x=x)[0], run_model(model, x=x)[0], rtol=1e-4, atol=1e-5)


def test_constant_over_the_batch_axis_is_not_a_link():
    model = _with_link("Mul", np.ones((2, 16)))
    out, report = optimize(model)
    assert not report.folded and any(n.op_type == "PRelu" for n in out.graph.node)


def test_division_of_a_constant_by_the_features_is_not_a_link():
    _, report = optimize(_with_link("Div", np.ones(16), data_first=False))
    assert not report.folded
