"""The layer-finding pass: which nodes are linear layers, and why a layer op that is not one is left alone."""

import onnx

from onnx_collapse import analyze


def _matmul(weight: str) -> onnx.ModelProto:
    """x @ w, with w a graph input ("input") or an initializer ("constant")."""
    signature = "(float[2, 8] x, float[8, 4] w) => (float[2, 4] y)" if weight == "input" else \
        "(float[2, 8] x) => (float[2, 4] y) <float[8, 4] w = {" + ", ".join(["0.5"] * 32) + "}>"
    return onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]> g {signature} {{ y = MatMul(x, w) }}')


def test_a_matmul_by_a_graph_input_is_named_with_why_it_is_no_linear_layer():
    remarks = analyze(_matmul("input")).remarks
    assert remarks == [("MatMul#0", "not a linear layer: MatMul weight is not a constant, non-empty float matrix")]


def test_a_matmul_by_a_constant_matrix_is_a_layer_and_gets_no_remark():
    assert analyze(_matmul("constant")).remarks == []
