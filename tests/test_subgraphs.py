"""Chains inside If / Loop / Scan bodies are folded; names captured from outer scopes are respected."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnx_collapse import optimize
from tests.builders import parsed

RNG = np.random.default_rng(0)


def _chain(prefix, x, y, n_in=8, hidden=16, n_out=8, slope=1.0) -> tuple[str, dict[str, np.ndarray]]:
    """Gemm - PRelu(slope) - Gemm from ``x`` to ``y`` in the text format, and its weights (names start ``prefix``)."""
    weights = {f"{prefix}w1": RNG.standard_normal((hidden, n_in)).astype(np.float32),
               f"{prefix}b1": RNG.standard_normal(hidden).astype(np.float32),
               f"{prefix}s": np.full((hidden,), slope, np.float32),
               f"{prefix}w2": RNG.standard_normal((n_out, hidden)).astype(np.float32)}
    text = f"""
        [{prefix}fc1] {prefix}h = Gemm <transB = 1> ({x}, {prefix}w1, {prefix}b1)
        [{prefix}act] {prefix}a = PRelu ({prefix}h, {prefix}s)
        [{prefix}fc2] {y} = Gemm <transB = 1> ({prefix}a, {prefix}w2)"""
    return text, weights


def _if_model():
    chain, weights = _chain("t_", "x", "t_y")  # reads x from the outer scope
    return parsed(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        main (bool cond, float[batch, 8] x) => (float[?, 8] y) {{
            [branch] y = If (cond) <
                then_branch = then () => (float[?, 8] t_y) {{ {chain} }},
                else_branch = else () => (float[?, 8] e_y) {{ e_y = Neg (x) }}
            >
        }}""", subgraph_weights={"then": weights})


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
    chain, weights = _chain("l_", "state", "next_state")
    model = parsed(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        main (float[batch, 8] x) => (float[batch, 8] y) {{
            [loop] y = Loop (trip, "", x) <
                body = body (int64 i, bool cond_in, float[?, 8] state) => (bool cond_out, float[?, 8] next_state) {{
                    {chain}
                    cond_out = Identity (cond_in)
                }}
            >
        }}""", {"trip": np.array(3, np.int64)}, {"body": weights})
    out, report = optimize(model, rtol=1e-3, atol=1e-3)
    assert [r.status for r in report.folds] == ["folded"] and report.verification.passed
    x = RNG.standard_normal((2, 8)).astype(np.float32) * 0.1
    np.testing.assert_allclose(_run(out, {"x": x}), _run(model, {"x": x}), rtol=1e-3, atol=1e-3)


def test_tensor_read_inside_a_subgraph_is_not_folded_across():
    chain, weights = _chain("", "x", "y")
    # an If branch reads the hidden tensor "h" from the outer scope: "h" has another reader
    model = parsed(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        main (bool cond, float[batch, 8] x) => (float[batch, 8] y, float[batch, 16] side) {{
            {chain}
            side = If (cond) <
                then_branch = then () => (float[?, 16] t) {{ t = Identity (h) }},
                else_branch = else () => (float[?, 16] e) {{ e = Identity (h) }}
            >
        }}""", weights)
    out, report = optimize(model, input_shapes={"cond": ()})
    assert not report.folded
    assert out.SerializeToString() == model.SerializeToString()


def test_model_local_functions_are_left_intact_and_reported():
    model = _if_model()
    fn = onnx.parser.parse_function('<domain: "custom", opset_import: ["" : 17]> Twice (a) => (b) { b = Add (a, a) }')
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("custom", 1))
    out, report = optimize(model, input_shapes={"cond": ()})
    assert list(out.functions) == [fn]
    assert any("model-local function" in n and "Twice" in n for n in report.notes)


def test_scan_body_chain_of_matmuls_is_folded():
    weights = {"w1": RNG.standard_normal((8, 16)).astype(np.float32),
               "w2": RNG.standard_normal((16, 4)).astype(np.float32), "b2": RNG.standard_normal(4).astype(np.float32)}
    model = parsed("""
        <ir_version: 8, opset_import: ["" : 17]>
        main (float[1] acc0, float[5, 8] x) => (float[1] acc_final, float[5, 4] y) {
            [scan] acc_final, y = Scan <
                body = body (float[1] acc, float[8] row) => (float[1] acc_out, float[4] out_row) {
                    [fc1] h = MatMul (row, w1)
                    [act] a = LeakyRelu <alpha = 1.0> (h)
                    [fc2] m = MatMul (a, w2)
                    [fc2_bias] out_row = Add (m, b2)
                    acc_out = Identity (acc)
                },
                num_scan_inputs = 1
            > (acc0, x)
        }""", subgraph_weights={"body": weights})
    out, report = optimize(model)
    assert [r.status for r in report.folds] == ["folded"] and report.verification.passed
    body_ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node]
    assert body_ops.count("MatMul") == 1 and "LeakyRelu" not in body_ops
    feed = {"acc0": np.zeros(1, np.float32), "x": RNG.standard_normal((5, 8)).astype(np.float32)}
    sess = [ort.InferenceSession(m.SerializeToString()) for m in (model, out)]
    np.testing.assert_allclose(sess[1].run(["y"], feed)[0], sess[0].run(["y"], feed)[0], rtol=1e-4, atol=1e-4)
