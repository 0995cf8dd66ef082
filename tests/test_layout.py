import numpy as np
import pytest

from onnx_collapse import convalg
from onnx_collapse.layout import LAST_AXIS, ConvLayout, Features, LastAxis, Windows

RNG = np.random.default_rng(0)


def test_last_axis_rows_are_every_position_of_input_and_output():
    x, y = RNG.standard_normal((2, 3, 5)), RNG.standard_normal((2, 3, 4))
    ((xr, yr),) = LAST_AXIS.pairs(x, y, 5, 4, 1 << 20)
    np.testing.assert_array_equal(xr, x.reshape(6, 5))
    np.testing.assert_array_equal(yr, y.reshape(6, 4))
    ((xr, yr),) = LAST_AXIS.pairs(x, None, 5, None, 1 << 20)
    assert yr is None and xr.shape == (6, 5)


def test_last_axis_refuses_tensors_not_laid_out_so():
    x = RNG.standard_normal((2, 3, 5))
    assert LAST_AXIS.pairs(x, None, 4, None, 1 << 20) is None
    assert LAST_AXIS.pairs(x, RNG.standard_normal((3, 3, 4)), 5, 4, 1 << 20) is None  # rows differ
    assert LAST_AXIS.pairs(np.float32(1.0), None, 1, None, 1 << 20) is None
    assert "last axis" in LastAxis.mismatch


def test_windows_are_the_convolution_patches_with_its_output_channels():
    window = Windows((3, 3), (2, 1), (1, 0, 1, 2), (1, 1))
    x = RNG.standard_normal((2, 3, 7, 6))
    out = convalg.output_size((7, 6), window.kernel, window.strides, window.pads, window.dilations)
    y = RNG.standard_normal((2, 5, *out))
    chunks = list(window.pairs(x, y, 27, 5, 1 << 20))
    xs = np.concatenate([c[0] for c in chunks])
    ys = np.concatenate([c[1] for c in chunks])
    np.testing.assert_array_equal(xs, convalg.patches(x, window.kernel, window.strides, window.pads,
                                                      window.dilations))
    np.testing.assert_array_equal(ys, np.moveaxis(y, 1, -1).reshape(-1, 5))
    assert window.pairs(x, None, 28, None, 1 << 20) is None  # not this many channels x kernel
    assert window.pairs(x, y[:, :, :1], 27, 5, 1 << 20) is None  # not the convolution's output
    assert window.noun == "windows" and "convolution" in window.mismatch


def test_rows_compare_by_value_as_calibration_keys():
    assert LastAxis() == LAST_AXIS and hash(LastAxis()) == hash(LAST_AXIS)
    assert Windows((3,), (1,), (1, 1), (1,)) == Windows((3,), (1,), (1, 1), (1,))
    assert Windows((3,), (1,), (1, 1), (1,)) != Windows((3,), (1,), (1, 1), (1,), groups=2)
    assert LAST_AXIS != Windows((1,), (1,), (0, 0), (1,))


def test_features_layout():
    layout = Features(input_rank=3, positions=7)
    assert layout.axis == -1 and layout.rows == LAST_AXIS and layout.group_unit == 1
    assert layout.macs(4, 5) == 4 * 5 * 7
    assert layout.sample_shape(6) == [4, 4, 6]
    assert Features().sample_shape(6) == [4, 6]  # rank unknown: 2-D


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_convolution_macs_count_each_group_reading_its_own_channels(groups):
    layout = ConvLayout(input_rank=4, positions=10, window=Windows((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), groups))
    # a grouped convolution: each output channel reads c_in / groups channels x 9 kernel positions
    assert layout.macs(8, 12) == 10 * 12 * (8 // groups) * 9
    assert layout.axis == 1 and layout.group_unit == 9 and layout.rows == layout.window


def test_convolution_sample_shape_covers_the_dilated_kernel():
    layout = ConvLayout(input_rank=4, window=Windows((3, 5), (1, 1), (0, 0, 0, 0), (1, 3)))
    assert layout.sample_shape(2 * 15) == [2, 2, 8, 26]
