"""Pure numpy algebra of convolutions (groups = 1): composing two into one, and channel-wise affine maps.

A convolution here is ``ConvMap``: weight (C_out, C_in, *kernel) in float64, bias (C_out,) or None, and
its geometry (strides, begin+end pads, dilations), as ONNX's ``Conv`` computes it (cross-correlation over
zero-padded input). Every function returns a map that computes exactly what the inputs computed, or says
why no such map exists; nothing here knows about graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class ConvMap:
    """``y = conv(pad(x, pads), weight, strides, dilations) + bias`` with channels on axis 1."""

    weight: np.ndarray  # (C_out, C_in, *kernel), float64
    bias: np.ndarray | None
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # begin pads then end pads, as ONNX
    dilations: tuple[int, ...]

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def spatial(self) -> int:
        return len(self.kernel)

    @property
    def is_pointwise(self) -> bool:
        """A 1x1 convolution with stride 1 and no padding: a per-position linear map of the channels."""
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides) and not any(self.pads)

    def matrix(self) -> np.ndarray:
        """The weight as a (C_in * prod(kernel), C_out) matrix (rows channel-major), ``x @ W`` convention."""
        return self.weight.reshape(self.weight.shape[0], -1).T


def from_matrix(matrix: np.ndarray, kernel: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``ConvMap.matrix``: a (C_in * prod(kernel), C_out) matrix as a (C_out, C_in, *kernel) weight."""
    c_out = matrix.shape[1]
    return np.ascontiguousarray(matrix.T).reshape(c_out, -1, *kernel)


def _padded(conv: ConvMap) -> bool:
    return any(conv.pads)


def scale_input(conv: ConvMap, scale: np.ndarray | float, shift: np.ndarray | float) -> ConvMap | str:
    """``conv(x * scale + shift)`` per input channel, or why it is not one conv (a shift seen through padding)."""
    c_in = conv.weight.shape[1]
    s = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (c_in,))
    t = np.broadcast_to(np.asarray(shift, np.float64).reshape(-1), (c_in,))
    if np.any(t != 0) and _padded(conv):
        return "a per-channel shift before a padded convolution (padding sees zeros, not the shift)"
    weight = conv.weight * s.reshape(1, -1, *([1] * conv.spatial))
    extra = np.einsum("oik,i->o", conv.weight.reshape(*conv.weight.shape[:2], -1), t)
    bias = extra if conv.bias is None else conv.bias + extra
    return replace(conv, weight=weight, bias=bias)


def scale_output(conv: ConvMap, scale: np.ndarray | float, shift: np.ndarray | float) -> ConvMap:
    """``conv(x) * scale + shift`` per output channel."""
    c_out = conv.weight.shape[0]
    s = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (c_out,))
    t = np.broadcast_to(np.asarray(shift, np.float64).reshape(-1), (c_out,))
    weight = conv.weight * s.reshape(-1, *([1] * (conv.spatial + 1)))
    bias = t.copy() if conv.bias is None else conv.bias * s + t
    return replace(conv, weight=weight, bias=bias)


def _full_correlation(w2: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """Kernel of conv(conv(x, w1), w2) at stride/dilation 1: (C_out, C_in, k1 + k2 - 1 per axis)."""
    c_out, c_mid = w2.shape[:2]
    c_in = w1.shape[1]
    k1, k2 = w1.shape[2:], w2.shape[2:]
    size = tuple(a + b - 1 for a, b in zip(k1, k2))
    out = np.zeros((c_out, c_in, *size))
    for offset in np.ndindex(*k2):
        window = tuple(slice(o, o + k) for o, k in zip(offset, k1))
        out[(slice(None), slice(None), *window)] += np.einsum("om,mi...->oi...", w2[(slice(None), slice(None), *offset)], w1)
    return out


def compose(first: ConvMap, second: ConvMap) -> ConvMap | str:
    """One convolution computing ``second(first(x))``, or why there is none.

    - kxk then pointwise (1x1, no padding; any stride): the first's geometry, strides multiplied;
    - 1x1 (stride 1, no padding) then kxk: the second's geometry; the first's bias passes through the
      second's kernel, which is exact only where the second has no padding or the bias is zero;
    - kxk then kxk: one larger kernel (k1 + k2 - 1) when the first has stride and dilation 1 and the second
      no padding and dilation 1.
    """
    spatial = first.spatial
    b1 = first.bias
    second_1x1 = all(k == 1 for k in second.kernel) and not _padded(second)
    if second_1x1:
        w2 = second.weight.reshape(second.weight.shape[:2])
        weight = np.einsum("om,mi...->oi...", w2, first.weight)
        bias = _bias_through(second, b1)
        strides = tuple(a * b for a, b in zip(first.strides, second.strides))
        return ConvMap(weight, bias, strides, first.pads, first.dilations)
    if first.is_pointwise:
        w1 = first.weight.reshape(first.weight.shape[:2])
        if b1 is not None and np.any(b1 != 0) and _padded(second):
            return "the first layer's bias would be seen through the second's zero padding"
        weight = np.einsum("om...,mi->oi...", second.weight, w1)
        return ConvMap(weight, _bias_through(second, b1), second.strides, second.pads, second.dilations)
    if any(s != 1 for s in first.strides) or any(d != 1 for d in first.dilations + second.dilations):
        return "merging two kxk convolutions needs stride and dilation 1 in the first, dilation 1 in the second"
    if _padded(second):
        return "the second convolution pads its input (the merged one would pad differently)"
    weight = _full_correlation(second.weight, first.weight)
    return ConvMap(weight, _bias_through(second, b1), second.strides, first.pads, (1,) * spatial)


def _bias_through(second: ConvMap, b1: np.ndarray | None) -> np.ndarray | None:
    """The second conv's bias plus the first's bias carried through the second's whole kernel."""
    if b1 is None:
        return second.bias
    carried = np.einsum("omk,m->o", second.weight.reshape(*second.weight.shape[:2], -1), b1)
    return carried if second.bias is None else second.bias + carried


def output_size(size: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...], pads: tuple[int, ...],
                dilations: tuple[int, ...]) -> tuple[int, ...]:
    """Output positions per spatial axis of a convolution over an input of spatial ``size``."""
    n = len(kernel)
    return tuple((s + pads[i] + pads[n + i] - dilations[i] * (k - 1) - 1) // strides[i] + 1
                 for i, (s, k) in enumerate(zip(size, kernel)))


def patches(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...], pads: tuple[int, ...],
            dilations: tuple[int, ...]) -> np.ndarray:
    """The input windows a convolution reads (im2col): (N * output positions, C * prod(kernel)), rows in
    (image, position) order, columns channel-major as ``ConvMap.matrix``'s rows, so
    ``patches(x) @ matrix + bias`` is the convolution's output with channels moved last."""
    n, c, *size = x.shape
    spatial = len(kernel)
    out = output_size(tuple(size), kernel, strides, pads, dilations)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[spatial + i]) for i in range(spatial)])
    columns = np.empty((n, *out, c, int(np.prod(kernel, dtype=np.int64))), dtype=x.dtype)
    for k, offset in enumerate(np.ndindex(*kernel)):
        window = tuple(slice(o * d, o * d + s * (p - 1) + 1, s)
                       for o, d, s, p in zip(offset, dilations, strides, out))
        columns[..., k] = np.moveaxis(padded[(slice(None), slice(None), *window)], 1, -1)
    return columns.reshape(-1, columns.shape[-2] * columns.shape[-1])


def window_blocks(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...], pads: tuple[int, ...],
                  dilations: tuple[int, ...], max_bytes: int):
    """``patches(x, ...)`` in blocks of at most about ``max_bytes`` (as float64), in the same row order:
    yields (image slice, output-row slice along the first spatial axis, the block's windows). Several
    images per block when they fit, else slabs of one image's output rows, so a large image never has
    all its windows in memory at once."""
    n, c, *size = x.shape
    spatial = len(kernel)
    out = output_size(tuple(size), kernel, strides, pads, dilations)
    per_row = 8 * c * int(np.prod(kernel, dtype=np.int64)) * int(np.prod(out[1:], dtype=np.int64))
    rows = max(1, max_bytes // max(per_row, 1))
    if rows >= out[0]:
        images = max(1, rows // out[0])
        for i in range(0, n, images):
            yield slice(i, i + images), slice(0, out[0]), patches(x[i:i + images], kernel, strides, pads, dilations)
        return
    begin, s, d, k = pads[0], strides[0], dilations[0], kernel[0]
    other = [(0, 0)] + [(pads[a], pads[spatial + a]) for a in range(1, spatial)]
    for i in range(n):
        for r0 in range(0, out[0], rows):
            r1 = min(out[0], r0 + rows)
            lo, hi = r0 * s - begin, (r1 - 1) * s + d * (k - 1) + 1 - begin  # input rows read, unpadded coordinates
            a, b = min(max(lo, 0), size[0]), min(max(hi, 0), size[0])  # a pad may exceed the kernel's reach
            before, after = max(0, min(hi, 0) - lo), max(0, hi - max(lo, size[0]))
            slab = np.pad(x[i:i + 1, :, a:b], [(0, 0), (0, 0), (before, after)] + other[1:])
            yield slice(i, i + 1), slice(r0, r1), patches(slab, kernel, strides, (0,) * (2 * spatial), dilations)
