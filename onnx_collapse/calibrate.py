"""Calibration data: loading and splitting it, and streaming statistics of the tensors layers read.

One onnxruntime pass over the calibration rows, in batches, captures every requested tensor (the model
with extra outputs, as verification does) and keeps only sums: for each layer input ``x`` its row count,
column sums and ``X^T X``, for a chain also the cross terms with its real output ``y``, and for logits a
softmax reads, the softmax's curvature per class (``curvature``). Memory is
O(d^2) per tensor pair, whatever the number of rows (a convolution's rows are the windows it reads, its
features channels x kernel positions). Rows go to ``folds`` disjoint parts (seeded), so a
fit can be cross-validated from the sums alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import linalg
from .curvature import ClassCurvature, SoftmaxRead
from .errors import CollapseError, Param, Text, one_line
from .inputs import check_shapes, expected_inputs, graph_inputs, memory_limit, refuse_non_finite
from .io import ModelSource, read_npz
from .layout import LAST_AXIS, Rows
from .runner import probe_model, session

CALIBRATE = Param("calibrate")
HELD_OUT = 0.2  # fraction of the calibration rows kept for verification when no --inputs is given
BATCH_BYTES = 32 * 2**20  # captured activations per batch (the first batch measures the size of a row)
FIRST_BATCH = 8


@dataclass
class Moments:
    """Sums over rows of a layer's input ``x`` (and optionally its chain's output ``y``)."""

    count: int
    sum_x: np.ndarray
    gram: np.ndarray  # X^T X
    sum_y: np.ndarray | None = None
    cross: np.ndarray | None = None  # X^T Y
    sum_yy: float = 0.0  # sum of |y|^2

    def add(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        """Accumulate rows ``x`` (rows, n_in) and ``y`` (rows, n_out) in float64, in place."""
        x = np.asarray(x, dtype=np.float64)
        self.count += x.shape[0]
        self.sum_x += x.sum(axis=0)
        self.gram += x.T @ x
        if y is not None and self.cross is not None:
            y = np.asarray(y, dtype=np.float64)
            self.sum_y += y.sum(axis=0)
            self.cross += x.T @ y
            self.sum_yy += float(np.sum(y * y))

    def __add__(self, other: Moments) -> Moments:
        def plus(a, b):
            return None if a is None else a + b
        return Moments(self.count + other.count, self.sum_x + other.sum_x, self.gram + other.gram,
                       plus(self.sum_y, other.sum_y), plus(self.cross, other.cross), self.sum_yy + other.sum_yy)

    def __sub__(self, other: Moments) -> Moments:
        def minus(a, b):
            return None if a is None else a - b
        return Moments(self.count - other.count, self.sum_x - other.sum_x, self.gram - other.gram,
                       minus(self.sum_y, other.sum_y), minus(self.cross, other.cross), self.sum_yy - other.sum_yy)


def empty_moments(n_in: int, n_out: int | None = None) -> Moments:
    """Zero sums for inputs of width ``n_in`` (with cross terms when ``n_out`` is given)."""
    cross = None if n_out is None else np.zeros((n_in, n_out))
    return Moments(0, np.zeros(n_in), np.zeros((n_in, n_in)), None if n_out is None else np.zeros(n_out), cross)


def total(parts: Sequence[Moments]) -> Moments:
    """The sums over all parts."""
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


@dataclass(frozen=True)
class Request:
    """Statistics wanted for input tensor ``x`` of width ``n_in`` (and chain output ``y`` of width ``n_out``),
    its rows read as ``rows`` says (``layout.Rows``, the reading layer's ``layout.rows``): ``LastAxis``,
    features on the last axis, one row per position; ``Windows``, one window a convolution reads per row
    (``n_in`` = channels x kernel size), ``y``'s channels (axis 1) at the same output position its row.
    """

    x: str
    n_in: int
    y: str | None = None
    n_out: int | None = None
    rows: Rows = LAST_AXIS


@dataclass
class Statistics:
    """What a calibration pass measured: per request, one Moments per fold; ``rows`` calibration rows."""

    rows: int
    batches: int
    parts: dict[Request, list[Moments]] = field(default_factory=dict)
    skipped: dict[Request, str] = field(default_factory=dict)  # why a request has no statistics
    curvatures: dict[str, ClassCurvature] = field(default_factory=dict)  # softmax logits, by tensor

    def inputs(self, x: str, rows: Rows = LAST_AXIS) -> Moments | None:
        """The input sums of tensor ``x`` (read as ``rows``) over all rows, from any request that read it."""
        for request, parts in self.parts.items():
            if request.x == x and request.rows == rows:
                return total(parts)
        return None


# --- data -----------------------------------------------------------------------------------------------------

def load_arrays(model, data: str | os.PathLike | Mapping[str, np.ndarray], what: Text = CALIBRATE,
                max_memory: int | None = None) -> dict[str, np.ndarray]:
    """The calibration arrays, one per model input, all with the same number of rows (axis 0) and finite
    values; CollapseError (one line) for anything else. A file is read as ``io.read_npz`` reads it, its
    declared sizes checked against ``max_memory`` (default: half the available memory) first."""
    if isinstance(data, Mapping):
        arrays = {k: np.asarray(v) for k, v in data.items()}
    else:
        arrays = read_npz(data, what, *memory_limit(max_memory))
    label = what if isinstance(data, Mapping) else (what, f" {str(data)!r}")
    names = [i.name for i in graph_inputs(model)]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CollapseError(label, f" has no array for input {missing[0]!r} (it has "
                            f"{', '.join(sorted(arrays)) or 'none'}; {expected_inputs(model)}); save one array per "
                            f"input by name, e.g. np.savez(path, {missing[0]}=...)")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise CollapseError(label, f" has array {extra[0]!r}, which is not a model input ({expected_inputs(model)})")
    check_shapes(model, arrays, label, rows=True)
    rows = {n: arrays[n].shape[0] if arrays[n].ndim else None for n in names}
    if any(r is None for r in rows.values()):
        bad = next(n for n, r in rows.items() if r is None)
        raise CollapseError(label, f": array {bad!r} is a scalar; calibration rows go along axis 0")
    if len(set(rows.values())) > 1:
        raise CollapseError(label, ": arrays have different numbers of rows along axis 0 "
                            f"({', '.join(f'{n}: {r}' for n, r in rows.items())})")
    if names and next(iter(rows.values())) == 0:
        raise CollapseError(label, " has no rows")
    refuse_non_finite(arrays, label)
    return {n: arrays[n] for n in names}


def row_count(arrays: Mapping[str, np.ndarray]) -> int:
    return next(iter(arrays.values())).shape[0] if arrays else 0


def split_rows(arrays: Mapping[str, np.ndarray], seed: int, held_out: float = HELD_OUT
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(calibration, verification) rows: a seeded ``held_out`` fraction (at least one row) for verification,
    disjoint from the rest. CollapseError with fewer than 2 rows."""
    n = row_count(arrays)
    if n < 2:
        raise CollapseError(Param("calibrate"), f" has {n} row(s); holding rows out for verification needs at "
                            "least 2 (or give ", Param("inputs"), ")")
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, round(held_out * n)))
    held, kept = np.sort(order[:k]), np.sort(order[k:])
    return {a: v[kept] for a, v in arrays.items()}, {a: v[held] for a, v in arrays.items()}


def describe(data) -> str:
    """A short name for the calibration data in messages."""
    return "the calibration arrays" if isinstance(data, Mapping) else Path(data).name


# --- the streaming pass ---------------------------------------------------------------------------------------

def fold_rows(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Row indices of each fold: a seeded permutation dealt into ``folds`` parts (fewer if rows are few)."""
    order = np.random.default_rng(seed + 1).permutation(n)
    return [np.sort(order[f::folds]) for f in range(min(folds, n))]


def collect(source: ModelSource, requests: Sequence[Request], elem_types: Mapping[str, int],
            arrays: Mapping[str, np.ndarray], folds: int = 1, seed: int = 0,
            softmax_reads: Sequence[SoftmaxRead] = ()) -> Statistics:
    """Run the model once over ``arrays`` in batches and accumulate every request's sums per fold, and the
    softmax curvature of each of ``softmax_reads``' logits (``curvature``).

    Batches hold about BATCH_BYTES of captured activations (measured on the first batch), so the
    activations of all rows are never held at once.
    """
    n = row_count(arrays)
    names = list(dict.fromkeys([*(name for r in requests for name in (r.x, r.y) if name is not None),
                                *(read.tensor for read in softmax_reads)]))
    feeds_only = {i.name for i in graph_inputs(source.model)}
    wanted = [name for name in names if name not in feeds_only]
    probed = ModelSource(probe_model(source.model, wanted, elem_types), source.base_dir, None)
    sess = session(probed, "original model")
    parts_of = fold_rows(n, folds, seed)
    # only a chain's fit is cross-validated: an input's sums are kept once, not per fold
    stats = Statistics(n, 0, {r: [empty_moments(r.n_in, None if r.y is None else r.n_out)
                                  for _ in (parts_of if r.y is not None else [0])] for r in requests},
                       curvatures={read.tensor: ClassCurvature(read) for read in softmax_reads})
    step = FIRST_BATCH
    for f, rows in enumerate(parts_of):
        start = 0
        while start < rows.size:
            idx = rows[start:start + step]
            feed = {k: v[idx] for k, v in arrays.items()}
            values = _run(sess, wanted, feed)
            values.update({k: feed[k] for k in names if k in feed})
            per_row = sum(v.nbytes for v in values.values()) / max(idx.size, 1)
            step = max(1, int(BATCH_BYTES // max(per_row, 1)))
            _accumulate(stats, f, values)
            for tensor, curv in list(stats.curvatures.items()):
                if not curv.add(values[tensor]):  # the softmax does not normalise over the features alone
                    del stats.curvatures[tensor]
            stats.batches += 1
            start += idx.size
    stats.curvatures = {t: c for t, c in stats.curvatures.items() if c.sums is not None and np.isfinite(c.sums).all()}
    for request in list(stats.parts):
        parts = stats.parts[request]
        if request in stats.skipped:
            del stats.parts[request]
        elif not all(np.isfinite(p.gram).all() and (p.cross is None or np.isfinite(p.cross).all()) for p in parts):
            stats.skipped[request] = "the calibration data gives non-finite values"
            del stats.parts[request]
    return stats


def _run(sess, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not names:
        return {}
    try:
        return dict(zip(names, sess.run(names, feed)))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise CollapseError(f"onnxruntime cannot run the model on the calibration data: {one_line(exc)}") from None


PATCH_BYTES = 32 * 2**20  # windows of a convolution's input unfolded at once (float64)


def _pairs(request: Request, values: Mapping[str, np.ndarray]):
    """The request's (x rows, y rows) chunks from one batch, or None if its tensors do not line up."""
    x = np.asarray(values[request.x])
    y = None if request.y is None else np.asarray(values[request.y])
    return request.rows.pairs(x, y, request.n_in, request.n_out, PATCH_BYTES)


def _accumulate(stats: Statistics, fold: int, values: Mapping[str, np.ndarray]) -> None:
    for request, parts in stats.parts.items():
        if request in stats.skipped:
            continue
        pairs = _pairs(request, values)
        if pairs is None:
            stats.skipped[request] = request.rows.mismatch
            continue
        for x, y in pairs:
            parts[fold if len(parts) > 1 else 0].add(x, y)


# --- least-squares collapse -----------------------------------------------------------------------------------

FOLDS = 4  # cross-validation parts of the calibration rows, for chains fitted to their outputs
ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge strengths tried (x the mean input variance)
DEFAULT_ALPHA = 1e-2  # used when the rows are too few to cross-validate


@dataclass(frozen=True)
class Fit:
    """A chain refitted to its real outputs: ``weight``/``bias`` (None: the plain fold stays, it fits
    as well), the ridge strength, and root-mean-square errors per output on the calibration rows of the
    plain fold and of the fit (the fit's cross-validated, i.e. on rows it was not fitted to)."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    alpha: float
    plain_rms: float
    fitted_rms: float
    rows: int


def sse(m: Moments, weight: np.ndarray, bias: np.ndarray | None) -> float:
    """Sum over the rows of ``m`` of |x W + b - y|^2, from the sums alone."""
    value = float(np.sum((m.gram @ weight) * weight)) - 2 * float(np.sum(m.cross * weight)) + m.sum_yy
    if bias is not None:
        value += 2 * float((m.sum_x @ weight) @ bias) + m.count * float(bias @ bias) - 2 * float(bias @ m.sum_y)
    return max(value, 0.0)


def fit_toward(m: Moments, prior: np.ndarray, alpha: float, intercept: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Least squares of the chain's output on its input over the rows of ``m``, ridge-regularised toward
    the plain fold ``prior`` (not toward zero), with a free bias when ``intercept``."""
    if not intercept:
        return linalg.ridge_toward(m.gram, m.cross, prior, alpha), None
    n = max(m.count, 1)
    mx, my = m.sum_x / n, m.sum_y / n
    cov_xx = m.gram - n * np.outer(mx, mx)
    cov_xy = m.cross - n * np.outer(mx, my)
    weight = linalg.ridge_toward((cov_xx + cov_xx.T) / 2, cov_xy, prior, alpha)
    return weight, my - mx @ weight


def fit_chain(parts: Sequence[Moments], prior: np.ndarray, prior_bias: np.ndarray | None) -> Fit:
    """The calibrated fold of a chain whose statistics are ``parts`` (one per fold): the ridge strength
    with the least cross-validated error, refitted on all rows; the plain fold if it does as well."""
    whole = total(parts)
    intercept = prior_bias is not None
    plain = sse(whole, prior, prior_bias)
    scale = np.sqrt(max(whole.count, 1) * prior.shape[1])
    if len(parts) < 2 or min(p.count for p in parts) == 0:
        alpha, held = DEFAULT_ALPHA, None
    else:
        errors = {a: sum(sse(p, *fit_toward(whole - p, prior, a, intercept)) for p in parts) for a in ALPHAS}
        alpha = min(ALPHAS, key=lambda a: (errors[a], -a))
        held = errors[alpha]
    weight, bias = fit_toward(whole, prior, alpha, intercept)
    fitted = sse(whole, weight, bias) if held is None else held
    if held is not None and held >= plain:
        weight = bias = None
    return Fit(weight, bias, alpha, np.sqrt(plain) / scale, np.sqrt(fitted) / scale, whole.count)


def input_whitening(stats: Statistics | None, x: str, centered: bool, rows: Rows = LAST_AXIS
                    ) -> linalg.Whitening | None:
    """The output-error metric of the layer reading ``x`` (as ``rows``) on the calibration data, if measured."""
    m = None if stats is None else stats.inputs(x, rows)
    if m is None or m.count == 0:
        return None
    return linalg.whitening(m.count, m.sum_x, m.gram, centered=centered)
