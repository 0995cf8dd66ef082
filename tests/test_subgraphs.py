"""Chains inside If / Loop / Scan bodies are folded; names captured from outer scopes are respected."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_collapse import optimize

RNG = np.random.default_rng(0)


def _chain_nodes(prefix, x, y, n_in=8, hidden=16, n_out=8, slope=1.0):
    w1 = numpy_helper.from_array(RNG.standard_normal((hidden, n_in)).astype(np.float32), f"{prefix}w1")
    b1 = numpy_helper.from_array(RNG.standard_normal(hidden).astype(np.float32), f"{prefix}b1")
    s = numpy_helper.from_array(np.full((hidden,), slope, np.float32), f"{prefix}s")
    w2 = numpy_helper.from_array(RNG.standard_normal((n_out, hidden)).astype(np.float32), f"{prefix}w2")
    nodes = [
        helper.make_node("Gemm", [x, w1.name, b1.name], [f"{prefix}h"], transB=1, name=f"{prefix}fc1"),
        helper.make_node("PRelu", [f"{prefix}h", s.name], [f"{prefix}a"], name=f"{prefix}act"),
        helper.make_node("Gemm", [f"{prefix}a", w2.name], [y], transB=1, name=f"{prefix}fc2"),
    ]
    return nodes, [w1, b1, s, w2]


def _if_model():
    then_nodes, then_inits = _chain_nodes("t_", "x", "t_y")  # reads x from the outer scope
    else_nodes = [helper.make_node("Neg", ["x"], ["e_y"])]
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 8])  # noqa: E731
    then_branch = helper.make_graph(then_nodes, "then", [], [out("t_y")], then_inits)
    else_branch = helper.make_graph(else_nodes, "else", [], [out("e_y")])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch, name="branch")],
        "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [out("y")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model, feed):
    return ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]


def test_chain_inside_if_branch_is_folded_and_verified():
    model = _if_model()
    out, report = optimize(model, input_shapes={"cond": ()})
    (record,) = report.folds
    assert record.status == "folded" and record.layers[0].startswith("branch/then_branch/")
    assert record.error is not None and record.error.passed
    assert report.verification.passed
    then_ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node] + \
               [n.op_type for n in out.graph.node[0].attribute[1].g.node]
    assert then_ops.count("Gemm") == 1 and "PRelu" not in then_ops
    onnx.checker.check_model(out, full_check=True)
    x = RNG.standard_normal((5, 8)).astype(np.float32)
    for cond in (True, False):
        feed = {"cond": np.array(cond), "x": x}
        np.testing.assert_allclose(_run(out, feed), _run(model, feed), rtol=1e-4, atol=1e-4)


def test_loop_body_chain_is_folded():
    body_nodes, body_inits = _chain_nodes("l_", "state", "next_state")
    body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("next_state", TensorProto.FLOAT, [None, 8])],
        body_inits,
    )
    trip = numpy_helper.from_array(np.array(3, np.int64), "trip")
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "", "x"], ["y"], body=body, name="loop")], "main",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [trip],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out, report = optimize(model, rtol=1e-3, atol=1e-3)
    assert [r.status for r in report.folds] == ["folded"] and report.verification.passed
    x = RNG.standard_normal((2, 8)).astype(np.float32) * 0.1
    np.testing.assert_allclose(_run(out, {"x": x}), _run(model, {"x": x}), rtol=1e-3, atol=1e-3)


def test_tensor_read_inside_a_subgraph_is_not_folded_across():
    nodes, inits = _chain_nodes("", "x", "y")
    # an If branch reads the hidden tensor "h" from the outer scope: "h" has another reader
    then_branch = helper.make_graph([helper.make_node("Identity", ["h"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", TensorProto.FLOAT, [None, 16])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", TensorProto.FLOAT, [None, 16])])
    nodes.append(helper.make_node("If", ["cond"], ["side"], then_branch=then_branch, else_branch=else_branch))
    graph = helper.make_graph(
        nodes, "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("side", TensorProto.FLOAT, ["batch", 16])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out, report = optimize(model, input_shapes={"cond": ()})
    assert not report.folded
    assert out.SerializeToString() == model.SerializeToString()


def test_model_local_functions_are_left_intact_and_reported():
    model = _if_model()
    fn = helper.make_function("custom", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("custom", 1))
    out, report = optimize(model, input_shapes={"cond": ()})
    assert list(out.functions) == [fn]
    assert any("model-local function" in n and "Twice" in n for n in report.notes)


def test_scan_body_chain_of_matmuls_is_folded():
    w1 = numpy_helper.from_array(RNG.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(RNG.standard_normal((16, 4)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b2")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["row", "w1"], ["h"], name="fc1"),
         helper.make_node("LeakyRelu", ["h"], ["a"], alpha=1.0, name="act"),
         helper.make_node("MatMul", ["a", "w2"], ["m"], name="fc2"),
         helper.make_node("Add", ["m", "b2"], ["out_row"], name="fc2_bias"),
         helper.make_node("Identity", ["acc"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("acc", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("row", TensorProto.FLOAT, [8])],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("out_row", TensorProto.FLOAT, [4])],
        [w1, w2, b2],
    )
    graph = helper.make_graph(
        [helper.make_node("Scan", ["acc0", "x"], ["acc_final", "y"], body=body, num_scan_inputs=1, name="scan")],
        "main",
        [helper.make_tensor_value_info("acc0", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 8])],
        [helper.make_tensor_value_info("acc_final", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out, report = optimize(model)
    assert [r.status for r in report.folds] == ["folded"] and report.verification.passed
    body_ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node]
    assert body_ops.count("MatMul") == 1 and "LeakyRelu" not in body_ops
    feed = {"acc0": np.zeros(1, np.float32), "x": RNG.standard_normal((5, 8)).astype(np.float32)}
    sess = [ort.InferenceSession(m.SerializeToString()) for m in (model, out)]
    np.testing.assert_allclose(sess[1].run(["y"], feed)[0], sess[0].run(["y"], feed)[0], rtol=1e-4, atol=1e-4)
