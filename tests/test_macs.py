"""MACs are counted from the shapes a model really has: a hand count on models with dynamic spatial dims."""

import json

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from onnx_collapse import analyze, optimize
from onnx_collapse.macs import count, node_macs
from onnx_collapse.pipeline import model_stats

H, W = 16, 20
# conv 3->8 k3 (pad 1) + depthwise 8 k3 + global pool + MatMul 8->5
HAND_COUNT = 8 * H * W * 3 * 9 + 8 * H * W * 1 * 9 + 8 * 5


def _cnn() -> onnx.ModelProto:
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        cnn (float[N, 3, H, W] x) => (float[N, 5] y) {
            a = Conv <pads = [1, 1, 1, 1]> (x, w1)
            r = Relu (a)
            b = Conv <group = 8, pads = [1, 1, 1, 1]> (r, w2)
            p = GlobalAveragePool (b)
            f = Flatten (p)
            y = MatMul (f, w3)
        }""")
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 1, 3, 3)), ("w3", (8, 5))):
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    return model


def _tokens() -> onnx.ModelProto:
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        tokens (float[B, T, 16] x) => (float[B, T, 4] y) {
            h = MatMul (x, w)
            y = Add (h, b)
        }""")
    rng = np.random.default_rng(1)
    model.graph.initializer.extend([numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w"),
                                    numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    return model


def test_dynamic_spatial_dims_are_measured_at_the_given_shape():
    found = analyze(_cnn(), input_shapes={"x": (1, 3, H, W)})
    assert found.report.before.linear_macs == HAND_COUNT
    assert found.report.before.macs_uncounted == []
    assert "x[1,3,16,20]" in found.report.before.macs_basis


def test_batch_does_not_change_the_count_per_sample():
    assert analyze(_cnn(), input_shapes={"x": (4, 3, H, W)}).report.before.linear_macs == HAND_COUNT


def test_calibration_rows_give_the_shape(tmp_path):
    rows = np.random.default_rng(2).standard_normal((6, 3, H, W)).astype(np.float32)
    _, report = optimize(_cnn(), calibrate={"x": rows}, verify=False)
    assert report.before.linear_macs == report.after.linear_macs == HAND_COUNT
    assert "calibration row" in report.before.macs_basis


def test_unknown_sizes_are_not_counted_silently():
    report = analyze(_cnn()).report
    assert report.before.macs_uncounted == ["Conv#0", "Conv#2"]
    assert report.before.linear_macs == 8 * 5  # only the MatMul, whose size is known
    assert any("not counted" in n and "--input-shape" in n for n in report.notes)


def test_tokens_count_per_sample():
    assert analyze(_tokens(), input_shapes={"x": (2, 7, 16)}).report.before.linear_macs == 7 * 16 * 4
    assert model_stats(_tokens()).macs_uncounted  # T unknown without a shape


def test_truncated_conv_pair_is_counted_from_its_real_output(tmp_path):
    """A factor pair of a conv layer at rank r costs r * (C_in k^2 + C_out) per output pixel, measured."""
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        conv (float[N, 16, H, W] x) => (float[N, 32, H, W] y) {
            y = Conv <pads = [1, 1, 1, 1]> (x, w)
        }""")
    rng = np.random.default_rng(3)
    model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "w"))
    out, report = optimize(model, low_rank="all", rank_budget=0.3, verify=False, input_shapes={"x": (1, 16, 12, 10)})
    record = next(f for f in report.folds if f.status == "folded")
    rank = record.rank
    assert report.before.linear_macs == 32 * 16 * 9 * 120
    assert report.after.linear_macs == rank * (16 * 9 + 32) * 120 == record.macs_after


def test_node_macs_needs_every_size():
    node = onnx.helper.make_node("MatMul", ["a", "b"], ["c"])
    assert node_macs(node, lambda n: None, lambda n: None) is None


def test_report_json_carries_the_basis(tmp_path):
    report = analyze(_cnn(), input_shapes={"x": (1, 3, H, W)}).report
    data = json.loads(report.to_json())
    assert data["before"]["macs_basis"].startswith("x[1,3,16,20]")
    assert sum(data["before"]["layer_macs"].values()) == HAND_COUNT


@pytest.mark.parametrize("batch", [1, 3])
def test_count_reads_fixed_batches(batch):
    """A model whose input fixes its batch counts per sample from static shapes alone."""
    model = _cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    for k, value in ((2, H), (3, W)):
        model.graph.input[0].type.tensor_type.shape.dim[k].dim_value = value
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    assert count(model.graph, shapes).total == HAND_COUNT

