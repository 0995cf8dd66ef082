"""Convolutions as matrices: the windows a convolution reads (im2col) in onnxruntime's order, streamed in blocks,
and two convolutions composed into one."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_collapse import convalg
from tests.builders import parsed

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("kernel,strides,pads,dilations,size", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (7, 9)),
    ((3, 2), (2, 1), (0, 1, 2, 0), (1, 2), (9, 8)),
    ((5,), (3,), (2, 1), (2,), (17,)),
    ((2, 1, 3), (1, 2, 1), (1, 0, 0, 0, 1, 2), (1, 1, 1), (4, 5, 6)),
])
def test_windows_times_the_matrix_are_what_onnxruntime_convolves(kernel, strides, pads, dilations, size):
    rng = np.random.default_rng(0)
    c, o = 3, 4
    w, b = rng.standard_normal((o, c, *kernel)), rng.standard_normal(o)
    x = rng.standard_normal((2, c, *size)).astype(np.float32)
    model = parsed(f"""
        <ir_version: {onnx.IR_VERSION}, opset_import: ["" : 17]>
        g (float[] x) => (float[] y) {{
            y = Conv <dilations = {list(dilations)}, kernel_shape = {list(kernel)}, pads = {list(pads)},
                      strides = {list(strides)}> (x, w, b)
        }}""", {"w": w.astype(np.float32), "b": b.astype(np.float32)})
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    rows = convalg.patches(x.astype(np.float64), kernel, strides, pads, dilations)
    conv = convalg.ConvMap(w, b, strides, pads, dilations)
    assert y.shape[2:] == convalg.output_size(size, kernel, strides, pads, dilations)
    np.testing.assert_allclose(rows @ conv.matrix() + b, np.moveaxis(y, 1, -1).reshape(-1, o), atol=1e-4)


@pytest.mark.parametrize("max_bytes", [1, 500, 5000, 10**9])
def test_window_blocks_are_the_windows_in_order_whatever_the_block_size(max_bytes):
    """Blocks of whole images, or slabs of one image's output rows (a large image), concatenate to
    ``patches``: the same rows in the same order, padding at the slab edges included."""
    rng = np.random.default_rng(0)
    for kernel, strides, pads, dilations, size in [((3, 3), (2, 2), (3, 0, 2, 1), (2, 1), (11, 10)),
                                                   ((5,), (3,), (2, 1), (2,), (17,)),
                                                   ((2, 1, 3), (1, 2, 1), (1, 0, 0, 0, 1, 2), (1, 1, 1), (4, 5, 6)),
                                                   ((1,), (1,), (3, 0), (1,), (6,)),  # pads beyond the kernel's reach
                                                   ((1,), (1,), (0, 3), (1,), (6,)),
                                                   ((2, 2), (1, 1), (3, 0, 0, 0), (1, 1), (4, 5))]:
        x = rng.standard_normal((3, 2, *size))
        blocks = list(convalg.window_blocks(x, kernel, strides, pads, dilations, max_bytes))
        assert all(w.nbytes <= max(max_bytes, w.nbytes // max(r.stop - r.start, 1)) for _, r, w in blocks)
        np.testing.assert_array_equal(np.concatenate([w for *_, w in blocks]),
                                      convalg.patches(x, kernel, strides, pads, dilations))


def test_composition_matches_running_both_convolutions_in_float64():
    first = convalg.ConvMap(RNG.standard_normal((6, 2, 3, 3)), RNG.standard_normal(6), (1, 1), (1, 0, 1, 0), (1, 1))
    second = convalg.ConvMap(RNG.standard_normal((3, 6, 2, 2)), RNG.standard_normal(3), (2, 2), (0, 0, 0, 0), (1, 1))
    merged = convalg.compose(first, second)
    assert merged.kernel == (4, 4) and merged.strides == (2, 2)

    def conv(x, c):
        xp = np.pad(x, [(0, 0), (0, 0), (c.pads[0], c.pads[2]), (c.pads[1], c.pads[3])])
        k = c.kernel
        h = (xp.shape[2] - k[0]) // c.strides[0] + 1
        w = (xp.shape[3] - k[1]) // c.strides[1] + 1
        out = np.zeros((x.shape[0], c.weight.shape[0], h, w))
        for i in range(h):
            for j in range(w):
                patch = xp[:, :, i * c.strides[0]:i * c.strides[0] + k[0], j * c.strides[1]:j * c.strides[1] + k[1]]
                out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, c.weight)
        return out + c.bias.reshape(1, -1, 1, 1)

    x = RNG.standard_normal((2, 2, 8, 7))
    np.testing.assert_allclose(conv(x, merged), conv(conv(x, first), second), rtol=1e-10, atol=1e-10)


def _conv(x, c: convalg.ConvMap) -> np.ndarray:
    """``c`` applied to ``x`` (N, C, H, W) through its windows: (N, H', W', C_out)."""
    rows = convalg.patches(x, c.kernel, c.strides, c.pads, c.dilations)
    size = convalg.output_size(x.shape[2:], c.kernel, c.strides, c.pads, c.dilations)
    return (rows @ c.matrix() + (0 if c.bias is None else c.bias)).reshape(x.shape[0], *size, -1)


def test_a_per_channel_scale_and_shift_moves_into_an_unpadded_convolution_exactly():
    conv = convalg.ConvMap(RNG.standard_normal((4, 3, 3, 3)), RNG.standard_normal(4), (1, 1), (0, 0, 0, 0), (1, 1))
    scale, shift = RNG.standard_normal(3), RNG.standard_normal(3)
    x = RNG.standard_normal((2, 3, 6, 5))
    moved = convalg.scale_input(conv, scale, shift)
    expected = _conv(x * scale.reshape(1, 3, 1, 1) + shift.reshape(1, 3, 1, 1), conv)
    np.testing.assert_allclose(_conv(x, moved), expected, rtol=1e-10, atol=1e-10)
    out_scale, out_shift = RNG.standard_normal(4), RNG.standard_normal(4)
    np.testing.assert_allclose(_conv(x, convalg.scale_output(conv, out_scale, out_shift)),
                               _conv(x, conv) * out_scale + out_shift, rtol=1e-10, atol=1e-10)


def test_a_shift_before_a_padded_convolution_is_refused_but_a_scale_is_not():
    conv = convalg.ConvMap(RNG.standard_normal((4, 3, 3, 3)), None, (1, 1), (1, 1, 1, 1), (1, 1))
    assert "padding" in convalg.scale_input(conv, 2.0, 0.5)
    x = RNG.standard_normal((1, 3, 5, 5))
    np.testing.assert_allclose(_conv(x, convalg.scale_input(conv, 2.0, 0.0)), _conv(2.0 * x, conv), rtol=1e-10)


def test_two_convolutions_that_do_not_merge_say_why():
    strided = convalg.ConvMap(RNG.standard_normal((4, 3, 3, 3)), None, (2, 2), (0, 0, 0, 0), (1, 1))
    second = convalg.ConvMap(RNG.standard_normal((2, 4, 3, 3)), None, (1, 1), (0, 0, 0, 0), (1, 1))
    assert "stride and dilation 1" in convalg.compose(strided, second)
    first = convalg.ConvMap(RNG.standard_normal((4, 3, 3, 3)), None, (1, 1), (0, 0, 0, 0), (1, 1))
    padded = convalg.ConvMap(RNG.standard_normal((2, 4, 3, 3)), None, (1, 1), (1, 1, 1, 1), (1, 1))
    assert "pads its input" in convalg.compose(first, padded)
