"""Algebra of linear layers: composition, numerical rank, factor pairs, costs.

A linear layer here maps row vectors: ``y = x @ W + b`` with ``W`` of shape (in, out).
Everything is computed in float64; callers cast back to the model's dtype. Spectra and truncation
(Gram matrices, eigenvectors, projections) run on scipy's BLAS and LAPACK (see ``_blas``), the rest on
numpy's.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import dataclass, replace

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


CHUNK_BYTES = 16 * 2**20  # float64 working set per operand slice when multiplying stored weights


def matmul64(a: np.ndarray, b: np.ndarray, scipy_blas: bool = False) -> np.ndarray:
    """``a @ b`` in float64, reading the shared dimension in slices, so stored (float32, memory-mapped)
    operands are never converted whole.

    A result larger than a slice gets each slice's product added in place by scipy's BLAS (no temporary
    of its size); ``scipy_blas`` uses it for any result (callers between scipy's LAPACK calls, see
    ``_blas``); otherwise numpy's.
    """
    in_memory = a.dtype == np.float64 and b.dtype == np.float64 and type(a) is np.ndarray and type(b) is np.ndarray
    if in_memory and not scipy_blas:
        return a @ b
    rows, inner = a.shape
    cols = b.shape[1]
    out_t = np.zeros((rows, cols)).T  # (a @ b)^T = b^T a^T in Fortran order, which BLAS adds to in place
    if out_t.size == 0:
        return out_t.T
    step = max(inner, 1) if in_memory else _slice_width(inner, max(rows, cols))
    in_place = scipy_blas or out_t.nbytes > CHUNK_BYTES
    with np.errstate(all="ignore"):  # non-finite weights give non-finite folds, refused when cast back
        for start in range(0, inner, step):
            stop = min(inner, start + step)
            left, right = slice64(a, 1, start, stop), slice64(b, 0, start, stop)
            if in_place:
                (first, t1), (second, t2) = _operand(right.T), _operand(left.T)
                out_t = _blas("dgemm")(1.0, first, second, beta=1.0, c=out_t, trans_a=t1, trans_b=t2, overwrite_c=1)
            else:
                out_t += (left @ right).T
    release_pages(a)
    release_pages(b)
    return out_t.T


def _blas(name: str):
    """scipy's BLAS routine ``name``, imported on first use (folding small layers never needs it).

    The spectra and truncation (Gram matrices, eigenvectors, projections) run on scipy's BLAS and LAPACK
    alone: numpy and scipy each bring their own OpenBLAS, and alternating between the two left one's idle
    threads spinning against the other's work (1.8x slower truncating 768-wide layers on 2 cores)."""
    from scipy.linalg import blas

    return getattr(blas, name)


def _operand(x: np.ndarray) -> tuple[np.ndarray, int]:
    """``x`` (C- or Fortran-ordered) as BLAS takes it without a copy: a Fortran-ordered array and whether
    BLAS must transpose it to get ``x``."""
    return (x, 0) if x.flags.f_contiguous else (x.T, 1)


def _slice_width(inner: int, other: int) -> int:
    """Entries of the shared dimension per slice: CHUNK_BYTES of float64 for ``other`` of them."""
    return max(1, min(inner, CHUNK_BYTES // (8 * max(other, 1))))


def slice64(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """``array``'s entries ``start:stop`` along ``axis`` of a 2-D array in float64, C- or Fortran-ordered as
    they lie in memory (numpy and BLAS take either without a transposing copy); not copied if they are
    already so in memory (treat it as read-only).

    For a file view its pages are released as it is read, so reading a whole file slice by slice keeps
    about one slice resident: a slice contiguous in the file is released after it; a strided one (every
    row's few entries) is copied CHUNK_BYTES of the file at a time, released after each chunk (the kernel
    maps pages around each one touched, so the file would otherwise become resident in one slice).
    """
    part = array[start:stop] if axis == 0 else array[:, start:stop]
    if not isinstance(array, np.memmap) or array.ndim != 2:  # in memory: a copy only where needed
        out = np.asarray(part, dtype=np.float64, order="K")
        return out if out.flags.c_contiguous or out.flags.f_contiguous else np.ascontiguousarray(out)
    slow = int(np.argmax(np.abs(array.strides)))  # the axis whose neighbours are far apart in the file
    order = "C" if slow == 0 else "F"
    if slow == axis:  # the slice is contiguous in the file
        out = np.array(part, dtype=np.float64, order=order)
        release_pages(array)
        return out
    out = np.empty(part.shape, dtype=np.float64, order=order)
    step = max(1, CHUNK_BYTES // max(abs(array.strides[slow]), 1))
    for first in range(0, part.shape[slow], step):
        piece = (slice(first, first + step), slice(None)) if slow == 0 else (slice(None), slice(first, first + step))
        out[piece] = part[piece]
        release_pages(array)
    return out


def release_pages(array: np.ndarray) -> None:
    """Let the pages of a memory-mapped (file view) ``array`` leave this process's resident memory; they are
    read from the file again if touched. A weight read once then costs no memory while the others are read."""
    mapped = getattr(array, "_mmap", None)
    if isinstance(array, np.memmap) and mapped is not None and hasattr(mapped, "madvise"):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map, or a platform without the advice: only memory is at stake
            pass


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
    if len(layers) == 1:  # a float64 copy even for one layer (never a file view)
        weight = np.array(weight, dtype=np.float64)
        release_pages(first.weight)
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
    singular_values: np.ndarray | None = None  # when known, the pair is factor_pair's (U sqrt(S), sqrt(S) V^T)

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
    return np.linalg.svd(_finite64(weight), full_matrices=False)


def _finite64(weight: np.ndarray) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float64)
    if not np.isfinite(w).all():
        raise NonFiniteError("the weights are not all finite")
    return w


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


# --- spectra and truncation: values once, factors only for the chosen rank ---------------------------------

class NonFiniteError(ValueError):
    """A weight with non-finite values: it has no spectrum and no truncation."""


GRAM_MIN_DIM = 256  # from this narrower side on, spectra come from the Gram matrix's eigenvalues (faster)


def gram(weight: np.ndarray) -> tuple[np.ndarray, bool]:
    """The float64 Gram matrix of ``weight`` on its narrower side, and whether that side is the rows:
    ``W W^T`` (rows) or ``W^T W``. Read in slices (``weight`` may be a memory-mapped float32 file); a
    Gram matrix larger than a slice gets each slice's part added in place by BLAS syrk (no temporary of
    its size)."""
    rows = weight.shape[0] <= weight.shape[1]
    x = weight if rows else weight.T  # the Gram matrix is x x^T, summed over slices of x's columns
    n, inner = x.shape
    upper = np.zeros((n, n)).T  # Fortran order, so BLAS adds to it in place; it fills its upper triangle
    with np.errstate(all="ignore"):
        step = _slice_width(inner, n)
        for start in range(0, inner, step):
            part, transposed = _operand(slice64(x, 1, start, start + step))  # x x^T: op(part) op(part)^T
            upper = _blas("dsyrk")(1.0, part, beta=1.0, c=upper, trans=transposed, overwrite_c=1)
    release_pages(weight)
    g = upper.T  # C order: its lower triangle holds the sums; mirror it a block of rows at a time
    if not np.isfinite(np.sum(np.diagonal(g))):  # a non-finite weight reaches its row's diagonal entry
        raise NonFiniteError("the weights are not all finite")
    for top in range(0, n, 256):
        block = g[top:top + 256, top:]
        width = block.shape[0]
        diagonal = block[:, :width]
        diagonal[...] = np.tril(diagonal) + np.tril(diagonal, -1).T
        block[:, width:] = g[top + width:, top:top + width].T
    return g, rows


def gram_floor(n: int) -> float:
    """Relative size below which singular values from a Gram matrix of order ``n`` are round-off:
    eigenvalues are accurate to about n * eps * sigma_1^2, so sigma_i to sqrt(n * eps) * sigma_1."""
    return float(np.sqrt(max(n, 1) * np.finfo(np.float64).eps))


def symmetric_values(g: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric float64 ``g``, which is overwritten: LAPACK works in
    ``g`` itself (numpy's ``eigvalsh`` would copy it first)."""
    from scipy.linalg import eigh  # imported on first use: the CLI's other commands never pay for it

    return eigh(_fortran_view(g), eigvals_only=True, overwrite_a=True, check_finite=False, driver="evd")


FULL_EIGEN_WORKSPACE = 32 * 2**20  # up to this workspace (2 n^2 float64) a full eigendecomposition is faster


def top_eigenvectors(g: np.ndarray, count: int, full: bool | None = None) -> np.ndarray:
    """Eigenvectors (n, count) of the symmetric float64 ``g`` for its ``count`` largest eigenvalues,
    largest first; ``g`` is overwritten.

    LAPACK works in ``g``'s own memory. Up to FULL_EIGEN_WORKSPACE (or when ``full``) it computes every
    vector (syevd, fastest there); above, only the subset (syevr: O(n) workspace besides the vectors, where
    a full decomposition needs 2 n^2 float64 more, and numpy's ``eigh`` 4 n^2: more than a very wide
    layer's own weights). LinAlgError if the subset solver returns fewer vectors than asked (LAPACK's
    syevr can, rarely, on clustered spectra; scipy then silently returns what it found).
    """
    from scipy.linalg import eigh

    n = g.shape[0]
    count = min(max(count, 0), n)
    if count == 0:
        return np.zeros((n, 0))
    if full is None:
        full = 2 * n * n * 8 <= FULL_EIGEN_WORKSPACE
    if full:
        vec = eigh(_fortran_view(g), overwrite_a=True, check_finite=False, driver="evd")[1][:, n - count:]
    else:
        vec = eigh(_fortran_view(g), subset_by_index=[n - count, n - 1], overwrite_a=True, check_finite=False,
                   driver="evr")[1]
    if vec.shape[1] != count:
        raise np.linalg.LinAlgError(f"the eigensolver returned {vec.shape[1]} of {count} eigenvectors")
    return vec[:, ::-1]


def _fortran_view(g: np.ndarray) -> np.ndarray:
    """``g`` (symmetric) as a Fortran-ordered array sharing its memory, so LAPACK needs no copy."""
    g = np.ascontiguousarray(g, dtype=np.float64)
    return g.T


def _gram_values(g: np.ndarray) -> np.ndarray:
    """Singular values (descending) from a Gram matrix (overwritten); those under its round-off floor
    become 0."""
    n = g.shape[0]
    lam = symmetric_values(g)[::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    if s.size and s[0] > 0:
        s[s <= gram_floor(n) * s[0]] = 0.0
    return s


def singular_values(weight: np.ndarray | Factored) -> np.ndarray:
    """Singular values (descending) of a matrix or a Factored product, never its singular vectors.

    A pair (K x h)(h x N) needs only the triangular factors of two QRs; a matrix whose narrower side is
    at least GRAM_MIN_DIM uses the eigenvalues of its Gram matrix (values under ``gram_floor`` are 0).
    """
    if isinstance(weight, Factored):
        if weight.singular_values is not None:
            return weight.singular_values
        if len(weight.matrices) == 2:
            a, b = (np.asarray(m, dtype=np.float64) for m in weight.matrices)
            return np.linalg.svd(np.linalg.qr(a, mode="r") @ np.linalg.qr(b.T, mode="r").T, compute_uv=False)
        weight = weight.dense() if len(weight.matrices) > 1 else weight.matrices[0]
    if min(weight.shape) >= GRAM_MIN_DIM:
        return _gram_values(gram(weight)[0])
    return np.linalg.svd(_finite64(weight), compute_uv=False)


def top_factors(weight: np.ndarray | Factored, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``A`` (in, r), ``B`` (r, out) with ``A @ B`` the best rank-r approximation (factor_pair's scaling).

    A pair uses its QR-based thin SVD; a matrix with narrower side >= GRAM_MIN_DIM the top eigenvectors of
    its Gram matrix (the other factor is a projection of ``weight``, read in slices); directions under
    the Gram floor get zero factors.
    """
    if isinstance(weight, Factored):
        if weight.singular_values is not None:  # already ordered by singular value: truncation is slicing
            return weight.matrices[0][:, :rank], weight.matrices[1][:rank]
        if len(weight.matrices) == 2:
            return factor_pair(*weight.svd(), rank)
        weight = weight.dense() if len(weight.matrices) > 1 else weight.matrices[0]
    if min(weight.shape) < GRAM_MIN_DIM:
        return factor_pair(*svd(weight), rank)
    g, rows = gram(weight)
    try:
        vec = top_eigenvectors(g, rank)
    except np.linalg.LinAlgError:  # the subset solver fell short: every vector, from a new Gram matrix
        del g
        g = gram(weight)[0]
        vec = top_eigenvectors(g, rank, full=True)
    vec = np.ascontiguousarray(vec)
    del g
    # the projections in float64 give each direction's singular value exactly (the factors' scale)
    proj = matmul64(vec.T, weight, scipy_blas=True) if rows else matmul64(weight, vec, scipy_blas=True)
    s = np.sqrt(np.einsum("ij,ij->i" if rows else "ij,ij->j", proj, proj))  # no temporary of proj's size
    keep = s > gram_floor(vec.shape[0]) * (s.max() if s.size else 0.0)
    root = np.where(keep, np.sqrt(s), 0.0)
    inv = np.where(keep, 1.0 / np.where(keep, np.sqrt(s), 1.0), 0.0)
    if rows:  # W W^T = U S^2 U^T: A = U sqrt(S), B = sqrt(S)^-1 U^T W
        proj *= inv[:, None]
        vec *= root
        return vec, proj
    proj *= inv  # W^T W = V S^2 V^T: A = W V sqrt(S)^-1, B = sqrt(S) V^T
    return proj, root[:, None] * vec.T


# --- calibrated (activation-aware) algebra --------------------------------------------------------------------

WHITEN_DAMPING = 1e-3  # added to the input covariance, relative to its mean eigenvalue


@dataclass(frozen=True)
class Whitening:
    """The output-error metric of a layer's calibration inputs: for any change ``D`` of the weight,
    ``||(X - mean) D||_F^2 / rows + damping ||D||_F^2 = ||root @ D||_F^2``, ``root`` upper triangular
    (the transposed Cholesky factor of the damped covariance). Truncating ``root @ W`` then cuts exactly
    the singular values it drops from the output on the data (SVD-LLM), and the bias absorbs the mean.
    Where ``output`` is given, output feature ``c``'s error counts ``output[c]^2`` times (``curvature``): the
    metric is ``||root @ D @ diag(output)||_F^2``, truncated as ``root @ W @ diag(output)``."""

    root: np.ndarray
    mean: np.ndarray
    covariance: np.ndarray  # damped, (n, n)
    output: np.ndarray | None = None  # per-output-feature scales: ||root @ D @ diag(output)||_F (curvature.py)

    def block(self, start: int, stop: int) -> Whitening:
        """The metric of the input features ``start:stop`` alone (for grouped factors)."""
        cov = self.covariance[start:stop, start:stop]
        return Whitening(np.linalg.cholesky(cov).T, self.mean[start:stop], cov, self.output)

    def weighing_outputs(self, output: np.ndarray | None) -> Whitening:
        """This metric with output features weighed by ``output`` (None: all alike)."""
        return replace(self, output=output)


def covariance(count: int, total: np.ndarray, gram_sum: np.ndarray, centered: bool = True) -> np.ndarray:
    """Per-row covariance (or second moment when not ``centered``) from streamed sums."""
    n = max(count, 1)
    cov = gram_sum / n
    if centered:
        mean = total / n
        cov = cov - np.outer(mean, mean)
    return (cov + cov.T) / 2


def mean_eigenvalue(cov: np.ndarray) -> float:
    """The mean variance of ``cov`` (its trace over its size), floored at the smallest positive float64: the
    scale that ridges and dampings are relative to."""
    return max(float(np.trace(cov)) / max(cov.shape[0], 1), np.finfo(np.float64).tiny)


def whitening(count: int, total: np.ndarray, gram_sum: np.ndarray, damping: float | None = None,
              centered: bool = True) -> Whitening:
    """The Whitening of inputs with ``count`` rows, column sums ``total`` and ``X^T X`` ``gram_sum``.

    ``damping`` (relative to the mean variance, with a float64 floor) keeps directions the data never
    excites from being cut for free and makes the covariance positive definite (None: WHITEN_DAMPING). Not ``centered`` (a
    layer without bias, which cannot absorb the mean): the second moment, and a zero mean."""
    cov = covariance(count, total, gram_sum, centered)
    n = cov.shape[0]
    damping = WHITEN_DAMPING if damping is None else damping
    scale = mean_eigenvalue(cov)
    damped = cov + (damping + n * np.finfo(np.float64).eps) * scale * np.eye(n)
    mean = total / max(count, 1) if centered else np.zeros_like(total, dtype=np.float64)
    return Whitening(np.linalg.cholesky(damped).T, mean, damped)


def whitened(weight: np.ndarray | Factored, metric: Whitening) -> Factored:
    """``root @ W`` (``@ diag(output)`` where the metric weighs the outputs) as a Factored (a pair stays a pair)."""
    matrices = list(weight.matrices) if isinstance(weight, Factored) else [weight]
    matrices[0] = matmul64(metric.root, matrices[0])
    if metric.output is not None:
        matrices[-1] = np.asarray(matrices[-1], dtype=np.float64) * metric.output[None, :]
    return Factored(tuple(matrices))


def unwhiten(first: np.ndarray, metric: Whitening) -> np.ndarray:
    """``root^-1 @ first``: a factor of the whitened weight back in input coordinates."""
    return np.linalg.solve(metric.root, first)


def unweigh(second: np.ndarray, metric: Whitening) -> np.ndarray:
    """``second @ diag(output)^-1``: the last factor of the whitened weight back in output coordinates."""
    return second if metric.output is None else second / metric.output[None, :]


def mean_output(weight: np.ndarray | Factored, mean: np.ndarray) -> np.ndarray:
    """``mean @ W`` for a matrix or a Factored product (never forming the product)."""
    out = mean[None, :]
    for m in (weight.matrices if isinstance(weight, Factored) else (weight,)):
        out = matmul64(out, m)
    return out[0]


def ridge_toward(cov_xx: np.ndarray, cov_xy: np.ndarray, prior: np.ndarray, alpha: float) -> np.ndarray:
    """``argmin_W ||X W - Y||^2 + lam ||W - prior||^2`` from ``X^T X`` and ``X^T Y``, lam = alpha x the
    mean eigenvalue of ``cov_xx``. Directions the data never excites keep ``prior`` exactly."""
    lam = alpha * mean_eigenvalue(cov_xx)
    return np.linalg.solve(cov_xx + lam * np.eye(cov_xx.shape[0]), cov_xy + lam * prior)


def truncate(exact: Factored, rank: int, metric: Whitening | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Factors ``A``, ``B`` and bias of ``exact`` at ``rank``: the best rank-r approximation, or with a
    ``metric`` the one with the least output error on its data (the bias then keeps the mean output)."""
    if metric is None:
        return (*top_factors(exact, rank), exact.bias)
    a, b = top_factors(whitened(exact, metric), rank)
    a, b = unwhiten(a, metric), unweigh(b, metric)
    return a, b, _kept_mean(exact, metric.mean, a, b)


def nested_truncations(exact: Factored, max_rank: int, metric: Whitening | None = None):
    """``rank -> truncate(exact, rank, metric)`` for every rank up to ``max_rank``, from one factorization:
    the best rank-``max_rank`` factors are ordered by singular value, so each lower rank is their leading
    slice (Eckart-Young, in the whitened metric where given)."""
    a, b = top_factors(exact if metric is None else whitened(exact, metric), max_rank)

    def at(rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        first, second = a[:, :rank], b[:rank]
        if metric is None:
            return first, second, exact.bias
        first, second = unwhiten(first, metric), unweigh(second, metric)
        return first, second, _kept_mean(exact, metric.mean, first, second)

    return at


def truncate_grouped(weight: np.ndarray, groups: int, rank: int, bias: np.ndarray | None,
                     metric: Whitening | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ALDS's grouped factors of ``weight``: input features in ``groups`` blocks, each of ``rank``; the
    stacked first factors (groups, n_in/groups, rank), the second ((groups * rank), n_out) and the bias.
    With a ``metric``, each block is truncated in its own features' metric."""
    firsts, seconds = [], []
    width = weight.shape[0] // groups
    for g, block in enumerate(np.split(weight, groups, axis=0)):
        part = None if metric is None else metric.block(g * width, (g + 1) * width)
        a, b, _ = truncate(Factored((block,)), rank, part)
        firsts.append(a)
        seconds.append(b)
    first, second = np.stack(firsts), np.concatenate(seconds, axis=0)
    if metric is None:
        return first, second, bias
    kept = np.concatenate([metric.mean[g * width:(g + 1) * width] @ first[g] for g in range(groups)]) @ second
    return first, second, _shifted(bias, metric.mean @ weight - kept)


def _kept_mean(exact: Factored, mean: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    return _shifted(exact.bias, mean_output(exact, mean) - (mean @ a) @ b)


def _shifted(bias: np.ndarray | None, shift: np.ndarray) -> np.ndarray | None:
    """``bias + shift``; a missing bias stays missing (its metric was not centered, so ``shift`` is 0)."""
    return None if bias is None else bias + shift
