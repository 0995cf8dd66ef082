"""Time as a budget: forms timed alone at the model's shapes, interpolated between ranks, reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx.parser
import pytest

from onnx_collapse import optimize, timing
from onnx_collapse.allocate import Option, allocate_min_total, total_cost
from onnx_collapse.report import SCHEMA_VERSION

MODELS = Path(__file__).resolve().parents[1] / "models"


def _option(rank, macs, seconds=None):
    return Option(rank, 1, macs, macs, 0.0, seconds)


def test_option_seconds_interpolates_in_macs_between_measured_factor_forms():
    options = [_option(None, 1000), _option(1, 100), _option(2, 200), _option(4, 400), _option(8, 800)]
    got = timing.option_seconds(options, 5.0, [(200, 2.0), (400, 3.0)])
    assert got[0] == 5.0  # dense: as measured
    assert got[2] == pytest.approx(2.0) and got[3] == pytest.approx(3.0)
    assert got[1] == pytest.approx(1.5) and got[4] == pytest.approx(5.0)  # the line through the ends
    assert timing.option_seconds([_option(1, 100)], 5.0, [(400, 8.0)]) == [pytest.approx(2.0)]  # one point
    # below the smallest measured form a steep line would reach zero: in proportion to MACs instead
    assert timing.option_seconds([_option(1, 10)], 5.0, [(200, 1.0), (400, 9.0)]) == [pytest.approx(0.05)]


def test_a_noisy_slope_never_makes_a_smaller_form_free():
    # timings of 1.0 s at 200 MACs and 3.0 s at 400: the line through them is 0 at 100 MACs and below
    small, smaller = _option(1, 100), _option(1, 50)
    got = timing.option_seconds([small, smaller], 5.0, [(200, 1.0), (400, 3.0)])
    assert got == [pytest.approx(0.5), pytest.approx(0.25)]  # in proportion to MACs from the smallest measured
    assert all(g > 0 for g in got)


def test_a_noisy_falling_slope_never_makes_a_larger_form_free():
    # the larger of two tiny forms timed faster (noise): the line through them falls to zero above; a form
    # beyond the largest measured one costs at least what that one measured (CI once saw 0.0 s here)
    got = timing.option_seconds([_option(8, 800), _option(16, 1600)], 5.0, [(200, 2e-6), (400, 1e-6)])
    assert got == [pytest.approx(1e-6), pytest.approx(1e-6)]


def test_a_time_budget_counts_seconds():
    """The knapsack spends seconds, not MACs: a layer whose factors are slow is kept dense."""
    from onnx_collapse.allocate import LayerSpectrum

    slow = LayerSpectrum("slow", 8, 8, (Option(None, 1, 64, 64, 0.0, 1.0), Option(1, 1, 16, 16, 0.5, 0.95)),
                       np.ones(8))
    fast = LayerSpectrum("fast", 8, 8, (Option(None, 1, 64, 64, 0.0, 1.0), Option(1, 1, 16, 16, 0.5, 0.2)),
                       np.ones(8))
    chosen = allocate_min_total([slow, fast], [[0.0, 1.0], [0.0, 1.0]], 0.65, "time")
    assert [o.rank for o in chosen] == [None, 1]
    assert total_cost(chosen, "time") == pytest.approx(1.2)


def test_seconds_per_sample_of_a_small_model_is_positive():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[8, 16] x) => (float[8, 16] y) { y = Relu(x) }""")
    secs = timing.seconds_per_sample(model, {"x": np.ones((8, 16), np.float32)}, 8, runs=3)
    assert 0 < secs < 1


def test_optimize_with_a_time_budget_reports_measured_times(tmp_path):
    report_file = tmp_path / "report.json"
    _, report = optimize(str(MODELS / "encoder_dynamo.onnx"), output=str(tmp_path / "out.onnx"), low_rank="all",
                         rank_budget=0.5, budget_metric="time", atol=10.0, rtol=10.0)
    report_file.write_text(report.to_json())
    truncated = [f for f in report.folds if f.form == "truncated"]
    assert truncated and all(f.seconds_before > 0 and f.seconds_after > 0 for f in truncated)
    assert report.before.seconds > 0 and report.after.seconds > 0
    assert any("seconds per sample" in n for n in report.notes)
    payload = json.loads(report_file.read_text())
    assert payload["schema_version"] == SCHEMA_VERSION and payload["before"]["seconds"] == report.before.seconds


def test_convolutions_of_dynamic_size_are_timed_at_their_measured_input_shape(tmp_path):
    """Spatial dims unknown to shape inference: the layer's input shape is measured in the probe run at
    --input-shape, so each convolution is timed itself (no estimate from MACs)."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 16, H, W] x) => (float[N, 16, H, W] y) {
            a = Conv <kernel_shape = [1, 1]> (x, w1)
            b = Relu(a)
            y = Conv <kernel_shape = [1, 1]> (b, w2)
        }""")
    rng = np.random.default_rng(0)
    for name in ("w1", "w2"):
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            rng.standard_normal((16, 16, 1, 1)).astype(np.float32), name))
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    _, report = optimize(str(path), low_rank="all", rank_budget=0.5, budget_metric="time", verify=False,
                         input_shapes={"x": (1, 16, 24, 40)})
    assert not any("not timed" in n for n in report.notes), report.notes
    assert all(f.seconds_before > 0 for f in report.folds if f.form == "truncated")
