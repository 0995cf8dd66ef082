"""The optimizer's orchestration: one context per graph, the calibration split, counts before and after."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_collapse import CollapseError
from onnx_collapse.io import ModelSource
from onnx_collapse.options import Options
from onnx_collapse.pipeline import calibration_split, model_stats, optimize, run_passes
from tests.common import MODELS


def test_calibration_rows_and_verification_rows_never_overlap():
    model = onnx.load(str(MODELS / "three_layer.onnx"))
    rows = np.arange(20 * 64, dtype=np.float32).reshape(20, 64)
    options, phrase = calibration_split(model, Options(calibrate={"x": rows}))
    kept, held = options.calibrate["x"], options.inputs["x"]
    assert len(kept) + len(held) == 20 and len(held) == 4
    assert not {r.tobytes() for r in kept} & {r.tobytes() for r in held}
    assert "4 of 20 rows" in phrase


def test_the_same_file_for_calibration_and_verification_is_refused(tmp_path):
    path = tmp_path / "rows.npz"
    np.savez(path, x=np.ones((4, 64), np.float32))
    with pytest.raises(CollapseError, match="same file"):
        optimize(str(MODELS / "three_layer.onnx"), calibrate=str(path), inputs=str(path))


def test_passes_run_over_every_graph_and_stats_count_what_the_file_holds():
    model = onnx.load(str(MODELS / "encoder_dynamo.onnx"))
    contexts = run_passes(ModelSource(model), Options())
    assert [ctx.path for ctx in contexts] == [()] and len(contexts[0].candidates) == 3
    stats = model_stats(model)
    assert stats.params == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert stats.op_counts["PRelu"] == 3 and stats.linear_macs > 0


def test_optimize_returns_a_smaller_model_that_computes_the_same(tmp_path):
    out, report = optimize(str(MODELS / "encoder_dynamo.onnx"), output=str(tmp_path / "out.onnx"))
    assert report.verification.passed and report.after.params < report.before.params
    assert onnx.load(str(tmp_path / "out.onnx")).SerializeToString() == out.SerializeToString()
