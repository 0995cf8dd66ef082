"""The calibration passes: chains refitted by least squares on the calibration rows, measured on rows the fit
never saw."""

import onnx_collapse as oc
from tests.builders import shifted_rows, two_chains


def test_calibrated_fold_beats_the_plain_fold_on_held_out_rows_and_slope_1_stays_exact():
    model = two_chains(0.96)
    _, report = oc.optimize(model, calibrate={"x": shifted_rows(600, 12, 0)}, inputs={"x": shifted_rows(300, 12, 1)},
                            atol=1.0)
    near, exact = [f for f in report.folds if f.status == "folded"]
    assert near.calibrated and near.plain_error is not None
    assert near.error.max_abs < near.plain_error.max_abs / 2  # measured on rows the fit never saw
    assert near.error.mean_abs < near.plain_error.mean_abs / 2
    assert near.calibration_rms[1] < near.calibration_rms[0]
    assert not exact.calibrated and exact.error.max_abs < 1e-5 and exact.slopes == [[1.0, 1.0]]
