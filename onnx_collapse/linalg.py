"""Pure numpy algebra of linear layers: composition, numerical rank, factor pairs, costs.

A linear layer here maps row vectors: ``y = x @ W + b`` with ``W`` of shape (in, out).
Everything is computed in float64; callers cast back to the model's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Affine:
    """``x @ (scale * weight) + bias``; ``bias`` may be None (no bias).

    ``weight`` may be stored in the model's dtype and may be a read-only view of a file (np.memmap);
    the functions below read it in slices and compute in float64.
    """

    weight: np.ndarray
    bias: np.ndarray | None = None
    scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape  # type: ignore[return-value]


CHUNK_BYTES = 64 * 2**20  # float64 working set per slice when multiplying stored weights


def matmul64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in float64, reading the shared dimension in slices, so stored (float32, memory-mapped)
    operands are never converted whole."""
    if a.dtype == np.float64 and b.dtype == np.float64 and type(a) is np.ndarray and type(b) is np.ndarray:
        return a @ b
    rows, inner = a.shape
    cols = b.shape[1]
    step = max(1, CHUNK_BYTES // (8 * max(rows, cols, 1)))
    out = np.zeros((rows, cols), dtype=np.float64)
    with np.errstate(all="ignore"):  # non-finite weights give non-finite folds, refused when cast back
        for start in range(0, inner, step):
            stop = min(inner, start + step)
            out += np.asarray(a[:, start:stop], dtype=np.float64) @ np.asarray(b[start:stop], dtype=np.float64)
    return out


def compose(layers: Sequence[Affine]) -> Affine:
    """One float64 affine map equal to applying ``layers`` in order: W = W1 W2 ..., b = (b1 W2 + b2) W3 + ..."""
    first = layers[0]
    weight, scale = first.weight, first.scale
    bias = None if first.bias is None else np.asarray(first.bias, dtype=np.float64)
    for layer in layers[1:]:
        if bias is not None:
            bias = matmul64(bias[None, :], layer.weight)[0] * layer.scale
        if layer.bias is not None:
            b2 = np.asarray(layer.bias, dtype=np.float64)
            bias = b2 if bias is None else bias + b2
        weight = matmul64(weight, layer.weight)
        scale *= layer.scale
    weight = np.array(weight, dtype=np.float64)  # a float64 copy even for one layer (never a file view)
    if scale != 1.0:
        weight *= scale
    return Affine(weight, bias)


def elementwise_then(scale: np.ndarray | float, shift: np.ndarray | float, layer: Affine) -> Affine:
    """One Affine for ``x -> (x * scale + shift) @ (layer.scale * W) + b``; ``scale``/``shift`` broadcast
    over the layer's input features. The weight becomes a float64 copy."""
    n_in = layer.shape[0]
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (n_in,))
    t = np.broadcast_to(np.asarray(shift, dtype=np.float64).reshape(-1), (n_in,))
    bias = matmul64(t[None, :], layer.weight)[0] * layer.scale
    if layer.bias is not None:
        bias = bias + np.asarray(layer.bias, dtype=np.float64)
    weight = np.asarray(layer.weight, dtype=np.float64) * s[:, None]
    return Affine(weight, bias, layer.scale)


def then_elementwise(layer: Affine, scale: np.ndarray | float, shift: np.ndarray | float) -> Affine:
    """One Affine for ``x -> (x @ (layer.scale * W) + b) * scale + shift`` (per output feature)."""
    n_out = layer.shape[1]
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (n_out,))
    t = np.broadcast_to(np.asarray(shift, dtype=np.float64).reshape(-1), (n_out,))
    bias = t.copy() if layer.bias is None else np.asarray(layer.bias, dtype=np.float64) * s + t
    return Affine(np.asarray(layer.weight, dtype=np.float64) * s[None, :], bias, layer.scale)


def combine_elementwise(steps) -> tuple[np.ndarray | float, np.ndarray | float] | None:
    """``(scale, shift)`` equal to applying ``x * s + t`` for each (s, t) of ``steps`` in order (None
    entries are 1 and 0); None when every step is the identity."""
    scale: np.ndarray | float = 1.0
    shift: np.ndarray | float = 0.0
    changed = False
    for s, t in steps:
        if s is not None:
            scale, shift, changed = scale * np.asarray(s, np.float64), shift * np.asarray(s, np.float64), True
        if t is not None:
            shift, changed = shift + np.asarray(t, np.float64), True
    return (scale, shift) if changed else None


@dataclass(frozen=True)
class Factored:
    """A linear map kept as a product of matrices (never multiplied out unless asked) plus a bias."""

    matrices: tuple[np.ndarray, ...]
    bias: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrices[0].shape[0], self.matrices[-1].shape[1]

    def dense(self) -> np.ndarray:
        out = self.matrices[0]
        for m in self.matrices[1:]:
            out = out @ m
        return out

    def svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Thin SVD of the product; a pair (K x h)(h x N) costs O((K + N) h^2), never forming K x N."""
        if len(self.matrices) != 2:
            return svd(self.dense())
        a, b = self.matrices
        qa, ra = np.linalg.qr(a)
        qb, rb = np.linalg.qr(b.T)
        u, s, vt = np.linalg.svd(ra @ rb.T)
        return qa @ u, s, vt @ qb.T


def compose_split(layers: Sequence[Affine]) -> Factored:
    """The chain as a pair (left)(right) split at its narrowest inner dim, with the chain's total bias.

    The product's rank is at most that inner dim; keeping the pair avoids forming a large product.
    """
    inner = [layer.shape[1] for layer in layers[:-1]]
    cut = 1 + int(np.argmin(inner))
    left, right = compose(layers[:cut]), compose(layers[cut:])
    bias = None if left.bias is None else left.bias @ right.weight
    if right.bias is not None:
        bias = right.bias if bias is None else bias + right.bias
    return Factored((left.weight, right.weight), bias)


def rank_bound(shapes: Sequence[tuple[int, int]]) -> int:
    """An upper bound on the rank of a product of matrices with these shapes (its narrowest dim)."""
    return min(min(s) for s in shapes)


def numerical_rank(singular_values: np.ndarray, shape: tuple[int, int]) -> int:
    """Rank of a float64 matrix: singular values above max(shape) * eps * sigma_1 (numpy's rule).

    Values below that cut-off are rounding noise of the float64 product, so dropping them is exact.
    """
    if singular_values.size == 0 or singular_values[0] == 0:
        return 0
    cutoff = singular_values[0] * max(shape) * np.finfo(np.float64).eps
    return int(np.count_nonzero(singular_values > cutoff))


def svd(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD in float64: ``weight = U @ diag(s) @ Vt``."""
    return np.linalg.svd(np.asarray(weight, dtype=np.float64), full_matrices=False)


def factor_pair(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Factors ``A`` (in, r) and ``B`` (r, out) with ``A @ B`` the rank-r truncation.

    The singular values are split evenly (sqrt on each side) so both factors have similar scale,
    which keeps float16 factors in range.
    """
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def dense_params(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def factor_params(n_in: int, n_out: int, rank: int, bias: bool) -> int:
    return rank * (n_in + n_out) + (n_out if bias else 0)


def dense_macs(n_in: int, n_out: int) -> int:
    """Multiply-accumulates per input row."""
    return n_in * n_out


def factor_macs(n_in: int, n_out: int, rank: int) -> int:
    return rank * (n_in + n_out)


def max_factor_rank(n_in: int, n_out: int) -> int:
    """Largest rank r whose factor pair is strictly smaller than the dense matrix: r (in + out) < in out."""
    return max(0, (n_in * n_out - 1) // (n_in + n_out))


def spectral_errors(s: np.ndarray) -> np.ndarray:
    """Relative spectral error of keeping rank r, for r = 0..len(s): sigma_{r+1} / sigma_1 (0 at full rank)."""
    if s.size == 0 or s[0] == 0:
        return np.zeros(s.size + 1)
    return np.append(s / s[0], 0.0)


def frobenius_errors(s: np.ndarray) -> np.ndarray:
    """Relative Frobenius error of keeping rank r: sqrt(sum_{i>r} sigma_i^2) / ||W||_F, for r = 0..len(s)."""
    energy = np.cumsum((s**2)[::-1])[::-1]  # tail sums: energy[r] = sum_{i>=r} sigma_i^2
    total = energy[0] if energy.size else 0.0
    if total == 0:
        return np.zeros(s.size + 1)
    return np.sqrt(np.append(energy, 0.0) / total)
