"""Sequential fitting: truncations refitted in graph order to the original layers' outputs, given the inputs
the compressed model really gives them (SVD-LLM's closed-form update, regularised and cross-validated).

A one-pass truncation is fitted to the original model's activations; once the layers before it are truncated
its inputs differ. Here targets are taken in graph order. For target k, ``X`` is its input in the original
model and ``X~`` its input in the model whose targets before k are already refitted. The new factors minimise

    ||X~ W' + b' - (X W + b)||^2 + lam ||W' - W||^2   over rank(W') <= r

(ridge toward the original map ``W``, ``lam`` chosen by cross-validation over the calibration rows): the
least-squares solution ``W_ls`` of the ridge problem, then its best rank-r factors in the metric of ``X~``
(reduced-rank regression: the whitened truncation of ``W_ls``), the bias re-centred on the mean output. The
refit replaces the one-pass truncation only when it predicts the original outputs better on rows it was not
fitted to.

Cost: one pass of the original model captures every target's input (cached on disk per batch, never all
rows in memory); each target then runs only the part of the compressed model between the inputs already
cached and its own input. Statistics are streamed sums (``calibrate.Moments``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from . import calibrate, linalg
from .calibrate import Moments
from .io import ModelSource
from .layout import Rows
from .runner import BatchCache, Probed, needed_nodes, part_model, session

FOLDS = 4  # cross-validation parts (whole batches dealt round-robin)
MAX_STATISTICS_BYTES = 256 * 2**20  # a layer's refit holds its sums per part and a few n_in x n_in matrices
WINDOW_BYTES = 8 * 2**20  # a convolution's windows unfolded at once, in each model (two blocks and their outputs live)


def statistics_bytes(n_in: int, n_out: int, folds: int = FOLDS) -> int:
    """Memory a layer's refit needs at once: X^T X and X^T Y per part, plus the whole, a training split and
    the metric's factors (float64)."""
    return 8 * ((folds + 3) * n_in * n_in + (folds + 2) * n_in * n_out)


# --- the algebra (pure numpy) ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refit:
    """Factors ``a`` (n_in, r), ``b`` (r, n_out) and ``bias`` of a refitted truncation, with its ridge strength
    and the held-out RMS errors (per output element, against the original layer's outputs) of the one-pass
    truncation and of the refit; ``weighed``: those errors are of outputs scaled per feature (``refit``'s
    ``output``), not of the raw outputs."""

    a: np.ndarray
    b: np.ndarray
    bias: np.ndarray | None
    alpha: float
    one_pass_rms: float
    refit_rms: float
    rows: int
    weighed: bool = False


def refit_factors(m: Moments, prior: np.ndarray, prior_bias: np.ndarray | None, rank: int, alpha: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The rank-``rank`` factors fitted on the sums ``m`` (x: compressed inputs, y: original outputs), ridge
    ``alpha`` toward ``prior``: the ridge least-squares map, truncated in the inputs' own metric (damped by
    the same ridge), bias re-centred on the mean output (kept absent when ``prior_bias`` is None)."""
    intercept = prior_bias is not None
    weight, bias = calibrate.fit_toward(m, prior, alpha, intercept)
    metric = linalg.whitening(m.count, m.sum_x, m.gram, damping=alpha, centered=intercept)
    return linalg.truncate(linalg.Factored((weight,), bias), rank, metric)


def ridge_path(m: Moments, prior: np.ndarray, alphas: Sequence[float], intercept: bool):
    """``calibrate.fit_toward(m, prior, alpha, intercept)`` for each of ``alphas``, from one eigendecomposition
    of the inputs' covariance (a ridge solve per strength is then two matrix products)."""
    n = max(m.count, 1)
    if intercept:
        mx, my = m.sum_x / n, m.sum_y / n
        cov_xx = m.gram - n * np.outer(mx, mx)
        cov_xy = m.cross - n * np.outer(mx, my)
    else:
        cov_xx, cov_xy = m.gram, m.cross
    cov_xx = (cov_xx + cov_xx.T) / 2
    values, vectors = np.linalg.eigh(cov_xx)
    mean_eig = max(float(np.trace(cov_xx)) / max(cov_xx.shape[0], 1), np.finfo(np.float64).tiny)
    for alpha in alphas:
        lam = alpha * mean_eig
        weight = vectors @ ((vectors.T @ (cov_xy + lam * prior)) / (values + lam)[:, None])
        yield weight, (my - mx @ weight) if intercept else None


def _sse(m: Moments, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None) -> float:
    return calibrate.sse(m, linalg.matmul64(a, b), bias)


def refit(parts: Sequence[Moments], prior: np.ndarray, prior_bias: np.ndarray | None, rank: int,
          one_pass: tuple[np.ndarray, np.ndarray, np.ndarray | None], output: np.ndarray | None = None
          ) -> Refit | None:
    """The cross-validated refit of a truncation to rank ``rank`` (see the module docstring), or None when
    it does not predict the original outputs better than the ``one_pass`` factors on held-out parts (or the
    rows are too few to tell). ``output``: per-output-feature scales the errors are weighed by (``parts``
    then summed the scaled outputs, see ``statistics``); the fit, its cross-validation and the comparison
    are all made in those scaled outputs."""
    parts = [p for p in parts if p.count > 0]
    if len(parts) < 2:
        return None
    if output is not None:
        found = refit(parts, prior * output, None if prior_bias is None else prior_bias * output, rank,
                      _scaled(one_pass, output))
        if found is None:
            return None
        _, b, bias = _scaled((found.a, found.b, found.bias), 1.0 / output)
        return replace(found, b=b, bias=bias, weighed=True)
    whole = calibrate.total(parts)
    intercept = prior_bias is not None
    # the ridge strength from the full-rank fit's cross-validation (one eigendecomposition per part)
    errors = dict.fromkeys(calibrate.ALPHAS, 0.0)
    for p in parts:
        for a, (weight, bias) in zip(calibrate.ALPHAS, ridge_path(whole - p, prior, calibrate.ALPHAS, intercept)):
            errors[a] += calibrate.sse(p, weight, bias)
    alpha = min(calibrate.ALPHAS, key=lambda a: (errors[a], -a))
    held = sum(_sse(p, *refit_factors(whole - p, prior, prior_bias, rank, alpha)) for p in parts)
    baseline = sum(_sse(p, *one_pass) for p in parts)
    scale = np.sqrt(max(whole.count, 1) * prior.shape[1])
    if not np.isfinite(held) or held >= baseline:
        return None
    a, b, bias = refit_factors(whole, prior, prior_bias, rank, alpha)
    return Refit(a, b, bias, alpha, np.sqrt(baseline) / scale, np.sqrt(held) / scale, whole.count)


def _scaled(factors: tuple[np.ndarray, np.ndarray, np.ndarray | None], output: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Factors whose outputs are multiplied by ``output`` (per feature)."""
    a, b, bias = factors
    return a, b * output[None, :], None if bias is None else bias * output


def row_pairs(x_compressed: np.ndarray, x_original: np.ndarray, n_in: int, rows: Rows):
    """(compressed rows, original rows) of a layer's input in both models, read as the layer reads them
    (``rows``, from its layout: features on the last axis, or a convolution's windows in blocks), in the same
    order. Nothing when the tensors differ in shape or are not laid out so."""
    if np.shape(x_compressed) != np.shape(x_original):
        return
    ours = rows.pairs(np.asarray(x_compressed), None, n_in, None, WINDOW_BYTES)
    theirs = rows.pairs(np.asarray(x_original), None, n_in, None, WINDOW_BYTES)
    if ours is None or theirs is None:
        return
    for (a, _), (b, _) in zip(ours, theirs):
        yield a, b


# --- running parts of the model ------------------------------------------------------------------------------

def upstream(model: onnx.ModelProto, wanted: Mapping[str, int], given: Mapping[str, int]) -> onnx.ModelProto:
    """The part of ``model``'s main graph that computes the tensors ``wanted`` once the tensors in ``given``
    are known (both name -> element type): its inputs are the given tensors and the graph inputs it needs."""
    graph = model.graph
    kept, needs = needed_nodes(graph, list(wanted), given)
    declared = {i.name: i for i in graph.input}
    inputs = [declared[name] if name in declared and name not in given else
              onnx.helper.make_tensor_value_info(name, given.get(name, 1), None) for name in sorted(needs)]
    outputs = [onnx.helper.make_tensor_value_info(n, elem, None) for n, elem in wanted.items()]
    return part_model(model, kept, inputs, outputs)


def rows_per_batch(probed: Probed, arrays: Mapping[str, np.ndarray],
                   most: int, max_bytes: int = 4 * WINDOW_BYTES) -> int:
    """How many calibration rows a batch may hold so that the tensors a ``runner.probed_session`` outputs stay
    within about ``max_bytes`` for one batch (measured on the first row; at least 1, at most ``most``)."""
    sess, wanted = probed
    if sess is None:
        return most
    feed = {k: v[:1] for k, v in arrays.items()}
    per_row = sum(np.asarray(v).nbytes for v in sess.run(wanted, feed))
    return max(1, min(most, int(max_bytes // max(per_row, 1))))


def compressed_inputs(model: onnx.ModelProto, base_dir, x: str, elem: int, batches, cache: BatchCache,
                      elem_types: Mapping[str, int]):
    """``x`` in ``model`` (the compressed model so far) for each batch, computed from the tensors already in
    ``cache`` (and the graph inputs), each cached too; yields (batch, value)."""
    if x in cache:
        for b in range(len(batches)):
            yield b, cache.get(x, b)
        return
    given = {name: elem_types[name] for name in cache.names if name in elem_types}
    part = upstream(model, {x: elem}, given)
    feeds = [i.name for i in part.graph.input]
    sess = session(ModelSource(part, base_dir), "compressed model", optimized=True)
    for b, feed in enumerate(batches):
        value = sess.run([x], {n: cache.get(n, b) if n in given else feed[n] for n in feeds})[0]
        cache.put(x, b, value)
        yield b, value


def statistics(pairs_per_batch, weight: np.ndarray, bias: np.ndarray | None, folds: int = FOLDS,
               output: np.ndarray | None = None) -> list[Moments]:
    """Sums per fold (batches dealt round-robin) of (compressed input rows, original output rows): the original
    layer's outputs are its map ``x @ weight + bias`` applied to its original input rows (each feature
    multiplied by ``output`` where given)."""
    n_in, n_out = weight.shape
    parts = [calibrate.empty_moments(n_in, n_out) for _ in range(folds)]
    for b, pairs in pairs_per_batch:
        for ours, theirs in pairs:
            y = linalg.matmul64(np.asarray(theirs, dtype=np.float64), weight)
            y = y if bias is None else y + bias
            parts[b % folds].add(ours, y if output is None else y * output)
    return parts
