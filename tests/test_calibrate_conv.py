"""Calibration of convolutions: the windows a convolution reads (im2col), least-squares collapse of Conv
chains and activation-aware ALDS of Conv layers, checked in onnxruntime on rows the fit never saw."""

import numpy as np
import onnx
from onnx import helper, numpy_helper

import onnx_collapse as oc
from onnx_collapse import calibrate, convalg
from onnx_collapse.layout import Windows


def _conv_model(layers, slopes, c_in=4, size=(10, 10), seed=0) -> onnx.ModelProto:
    """x (N, c_in, *size) -> Conv -> PRelu(slope) -> Conv ...; ``layers`` as (c_out, kernel, strides, pads)."""
    rng = np.random.default_rng(seed)
    nodes, inits, current, channels = [], [], "x", c_in
    for k, (c_out, kernel, strides, pads) in enumerate(layers):
        fan_in = channels * int(np.prod(kernel))
        w = (rng.standard_normal((c_out, channels, *kernel)) / np.sqrt(fan_in)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(c_out)).astype(np.float32), f"b{k}")]
        nodes.append(helper.make_node("Conv", [current, f"w{k}", f"b{k}"], [f"c{k}"], kernel_shape=list(kernel),
                                      strides=list(strides), pads=list(pads)))
        current, channels = f"c{k}", c_out
        if k < len(slopes):
            slope = np.full((c_out, 1, 1), slopes[k], np.float32)
            inits.append(numpy_helper.from_array(slope, f"s{k}"))
            nodes.append(helper.make_node("PRelu", [current, f"s{k}"], [f"a{k}"]))
            current = f"a{k}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", 1, [None, c_in, *size])],
                              [helper.make_tensor_value_info("y", 1, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _images(n, c, size, seed):
    """Images with a mean, channels of unequal variance and neighbouring pixels alike, as real feature maps."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *size))
    for axis in range(2, x.ndim):  # smooth along each spatial axis
        x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
    scale = np.linspace(0.2, 2.0, c).reshape(1, c, *([1] * len(size)))
    return (x * scale + 0.5).astype(np.float32)


def test_calibrated_conv_fold_beats_the_plain_fold_on_held_out_images():
    model = _conv_model([(8, (3, 3), (1, 1), (1, 1, 1, 1)), (6, (1, 1), (1, 1), (0, 0, 0, 0))], [0.96])
    _, report = oc.optimize(model, calibrate={"x": _images(96, 4, (10, 10), 0)},
                            inputs={"x": _images(48, 4, (10, 10), 1)}, atol=1.0)
    (fold,) = [f for f in report.folds if f.status == "folded"]
    assert fold.calibrated and fold.plain_error is not None
    assert fold.error.max_abs < fold.plain_error.max_abs / 2  # on images the fit never saw
    assert fold.error.mean_abs < fold.plain_error.mean_abs / 2


def test_activation_aware_conv_truncation_loses_less_on_the_data_than_data_free():
    model = _conv_model([(16, (3, 3), (1, 1), (1, 1, 1, 1)), (16, (3, 3), (2, 2), (0, 0, 0, 0))], [0.5],
                        c_in=8, size=(12, 12))
    held = {"x": _images(48, 8, (12, 12), 1)}
    errors = {}
    for name, data in (("data-free", None), ("activation-aware", {"x": _images(128, 8, (12, 12), 0)})):
        _, report = oc.optimize(model, calibrate=data, inputs=held, low_rank="all", rank_budget=0.4, atol=100.0)
        truncated = [f for f in report.folds if f.form == "truncated"]
        assert len(truncated) == 2, report.notes
        assert all(("activation-aware" in f.reason) == (data is not None) for f in truncated)
        errors[name] = (max(f.error.mean_abs for f in truncated), max(f.error.max_abs for f in truncated))
    assert errors["activation-aware"][0] < 0.6 * errors["data-free"][0]  # on images neither run saw
    assert errors["activation-aware"][1] < errors["data-free"][1]


def test_conv_window_statistics_streamed_in_small_chunks_equal_all_at_once(monkeypatch):
    model = _conv_model([(5, (3, 3), (2, 1), (1, 0, 1, 2))], [], c_in=3, size=(9, 7))
    x = _images(20, 3, (9, 7), 0)
    geometry = ((3, 3), (2, 1), (1, 0, 1, 2), (1, 1))
    request = calibrate.Request("x", 27, "y", 5, Windows(*geometry))
    from onnx_collapse.io import ModelSource
    monkeypatch.setattr(calibrate, "PATCH_BYTES", 300)  # a few output rows of one image at a time
    stats = calibrate.collect(ModelSource(model, None), [request], {"x": 1, "y": 1}, {"x": x})
    (parts,) = stats.parts.values()
    rows = convalg.patches(x.astype(np.float64), *geometry)
    import onnxruntime as ort
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    y_rows = np.moveaxis(y, 1, -1).reshape(-1, 5).astype(np.float64)
    whole = calibrate.total(parts)
    assert whole.count == rows.shape[0] == y_rows.shape[0]
    np.testing.assert_allclose(whole.gram, rows.T @ rows, rtol=1e-9)
    np.testing.assert_allclose(whole.cross, rows.T @ y_rows, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(whole.sum_x, rows.sum(axis=0), rtol=1e-9)


def test_a_convolution_whose_input_is_not_what_it_reads_gets_no_statistics():
    model = _conv_model([(5, (3, 3), (1, 1), (1, 1, 1, 1))], [], c_in=3, size=(6, 6))
    wrong = calibrate.Request("x", 3 * 9, rows=Windows((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)))
    too_wide = calibrate.Request("x", 4 * 9, rows=wrong.rows)
    from onnx_collapse.io import ModelSource
    stats = calibrate.collect(ModelSource(model, None), [wrong, too_wide], {"x": 1}, {"x": _images(4, 3, (6, 6), 0)})
    assert wrong in stats.parts and too_wide in stats.skipped
    assert "convolution" in stats.skipped[too_wide]
