"""Global rank allocation (ALDS, arXiv 2107.11442): pure functions over singular-value spectra.

Each layer offers options (cost, relative error): keep it dense (error 0), or store a rank-r factor
pair, possibly with its input features split into k groups. The allocator picks one option per
layer so that the largest error over all layers is as small as possible while the total cost stays
within the budget. Cost is parameters or MACs per row of the weights (the bias is the same either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import linalg
from .progress import advance


@dataclass(frozen=True)
class Option:
    """One way to store a layer: ``groups`` x rank-``rank`` factors (rank None = dense)."""

    rank: int | None
    groups: int
    params: int
    macs: int
    error: float
    seconds: float | None = None  # measured/interpolated onnxruntime time per sample (``timing``), where known


@dataclass(frozen=True)
class LayerSpectrum:
    """What the allocator knows of one layer: its shape and its storage options (dense first)."""

    name: str
    n_in: int
    n_out: int
    options: tuple[Option, ...]
    singular_values: np.ndarray

    @property
    def dense(self) -> Option:
        return self.options[0]


def layer_errors(s: np.ndarray, metric: str) -> np.ndarray:
    """Relative error of keeping rank r = 0..len(s): ``spectral`` (ALDS) or ``frobenius``."""
    if metric == "spectral":
        return linalg.spectral_errors(s)
    if metric == "frobenius":
        return linalg.frobenius_errors(s)
    raise ValueError(f"unknown error metric {metric!r}")


def factor_options(n_in: int, n_out: int, s: np.ndarray, metric: str) -> list[Option]:
    """Dense, then every factor rank whose pair is strictly smaller than the dense matrix."""
    errors = layer_errors(s, metric)
    options = [Option(None, 1, n_in * n_out, n_in * n_out, 0.0)]
    for r in range(1, min(linalg.max_factor_rank(n_in, n_out), s.size) + 1):
        options.append(Option(r, 1, r * (n_in + n_out), r * (n_in + n_out), float(errors[r])))
    return options


def grouped_params(n_in: int, n_out: int, groups: int, rank: int) -> int:
    """Parameters (= MACs per row) of ``groups`` blocks of rank ``rank``: a block-diagonal first factor
    (``groups`` x (n_in/groups) x rank) and a dense second factor ((groups * rank) x n_out)."""
    return rank * n_in + groups * rank * n_out


def grouped_options(weight: np.ndarray, groups: int, metric: str, sigma_1: float, norm_f: float,
                    whiten: linalg.Whitening | None = None) -> list[Option]:
    """Options for splitting the input features of ``weight`` (n_in, n_out) into ``groups`` blocks.

    Error of rank j per block: spectral bound sqrt(sum_g sigma_{g,j+1}^2) / sigma_1(W) (the stacked
    residual's norm is at most that), or the exact Frobenius error sqrt(sum_g tail_g(j)) / ||W||_F.
    With ``whiten`` (activation-aware), each block's spectrum is in its own inputs' metric and the blocks'
    output errors add up, so the bound carries a factor sqrt(groups) (Cauchy-Schwarz); ``sigma_1`` and
    ``norm_f`` are then the whitened layer's.
    """
    n_in, n_out = weight.shape
    width = n_in // groups
    blocks = [linalg.singular_values(linalg.Factored((b,)) if whiten is None else
                                     linalg.whitened(b, whiten.block(g * width, (g + 1) * width)))
              for g, b in enumerate(np.split(weight, groups, axis=0))]
    spread = 1.0 if whiten is None else float(groups)
    size = min(b.size for b in blocks)
    options = []
    for j in range(1, size + 1):
        cost = grouped_params(n_in, n_out, groups, j)
        if cost >= n_in * n_out:
            break
        if metric == "spectral":
            err = np.sqrt(spread * sum(float(b[j]) ** 2 if j < b.size else 0.0 for b in blocks)) / sigma_1
        else:
            err = np.sqrt(spread * sum(float(np.sum(b[j:] ** 2)) for b in blocks)) / norm_f
        options.append(Option(j, groups, cost, cost, float(err) if sigma_1 and norm_f else 0.0))
    return options


def spectrum(name: str, weight: np.ndarray | linalg.Factored, metric: str = "spectral",
             max_groups: int = 1, unit: int = 1, whiten: linalg.Whitening | None = None) -> LayerSpectrum:
    """The storage options of ``weight`` (a matrix, or a Factored product): dense, factor pairs, and grouped
    pairs with up to ``max_groups`` groups of whole ``unit``-row blocks (a convolution's rows come in blocks
    of its kernel size per input channel; these need the dense matrix).

    Singular values only, once per layer. With ``whiten`` (the layer's calibration inputs), the spectrum is
    that of the whitened weight, so errors are relative output errors on the data (activation-aware ALDS).
    """
    factored = weight if isinstance(weight, linalg.Factored) else linalg.Factored((np.asarray(weight),))
    n_in, n_out = factored.shape
    s = linalg.singular_values(factored if whiten is None else linalg.whitened(factored, whiten))
    options = factor_options(n_in, n_out, s, metric)
    sigma_1, norm_f = (float(s[0]) if s.size else 0.0), float(np.sqrt(np.sum(s**2)))
    groupings = [k for k in range(2, max_groups + 1) if n_in % (k * unit) == 0]
    dense = factored.dense() if groupings else None
    for k in groupings:
        options += grouped_options(dense, k, metric, sigma_1, norm_f, whiten)
    advance()  # one layer's spectrum done (progress display)
    return LayerSpectrum(name, n_in, n_out, tuple(options), s)


def _cost(option: Option, by: str) -> float:
    """What ``option`` costs under budget metric ``by``: "params", "macs", or "time" (seconds per sample)."""
    if by == "time":
        return option.seconds if option.seconds is not None else float(option.macs)
    return option.params if by == "params" else option.macs


def cheapest_within(layer: LayerSpectrum, max_error: float, by: str = "params") -> Option:
    """The cheapest option of ``layer`` whose error is at most ``max_error`` (dense always qualifies)."""
    return min((o for o in layer.options if o.error <= max_error), key=lambda o: (_cost(o, by), o.error))


def allocate_max_error(layers: Sequence[LayerSpectrum], max_error: float, by: str = "params") -> list[Option]:
    """The smallest model whose every layer stays within ``max_error``."""
    return [cheapest_within(layer, max_error, by) for layer in layers]


def allocate_budget(layers: Sequence[LayerSpectrum], budget: float, by: str = "params") -> list[Option]:
    """Options minimising the maximum layer error with total cost <= ``budget`` x the dense cost.

    The total cost of the cheapest options within an error threshold never increases as the threshold
    grows, so a bisection over the sorted candidate thresholds (every option's error) finds the smallest
    feasible threshold exactly; what that leaves of the budget then lowers the other layers' errors
    (``spend_leftover``). If even the cheapest options overshoot, they are returned (the budget cannot be
    met; callers report it).
    """
    if not layers:
        return []
    limit = budget * sum(_cost(layer.dense, by) for layer in layers)
    thresholds = np.unique([o.error for layer in layers for o in layer.options])

    def total(e: float) -> int:
        return sum(_cost(o, by) for o in allocate_max_error(layers, e, by))

    lo, hi = 0, len(thresholds) - 1
    if total(thresholds[hi]) > limit:
        return allocate_max_error(layers, float(thresholds[hi]), by)
    while lo < hi:
        mid = (lo + hi) // 2
        if total(thresholds[mid]) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return spend_leftover(layers, allocate_max_error(layers, float(thresholds[lo]), by), limit, by)


def spend_leftover(layers: Sequence[LayerSpectrum], chosen: list[Option], limit: float, by: str = "params"
                   ) -> list[Option]:
    """Spend what the minimax choice leaves of the budget: repeatedly give the layer with the largest error
    that can still improve its cheapest better option that fits. The largest error never grows (the
    minimax optimum stays), the others only shrink, and the total stays within ``limit``."""
    chosen = list(chosen)
    spent = sum(_cost(o, by) for o in chosen)
    stuck: set[int] = set()
    while len(stuck) < len(chosen):
        k = max((i for i in range(len(chosen)) if i not in stuck), key=lambda i: chosen[i].error)
        better = [o for o in layers[k].options if o.error < chosen[k].error
                  and spent - _cost(chosen[k], by) + _cost(o, by) <= limit]
        if not better:
            stuck.add(k)
            continue
        pick = min(better, key=lambda o: (_cost(o, by), o.error))
        spent += _cost(pick, by) - _cost(chosen[k], by)
        chosen[k] = pick
    return chosen


def allocate_uniform(layers: Sequence[LayerSpectrum], budget: float, by: str = "params") -> list[Option]:
    """Baseline: the same rank ratio r / min(n_in, n_out) for every layer, the largest that fits the budget."""
    limit = budget * sum(_cost(layer.dense, by) for layer in layers)

    def pick(ratio: float) -> list[Option]:
        chosen = []
        for layer in layers:
            rank = max(1, int(np.floor(ratio * min(layer.n_in, layer.n_out))))
            factor = [o for o in layer.options if o.groups == 1 and o.rank == rank]
            chosen.append(factor[0] if factor else layer.dense)
        return chosen

    return _largest_fitting(pick, limit, by)


def allocate_energy(layers: Sequence[LayerSpectrum], budget: float, by: str = "params") -> list[Option]:
    """Baseline: per layer, the smallest rank keeping a fraction ``t`` of the spectral energy; the largest
    ``t`` whose total fits the budget."""
    limit = budget * sum(_cost(layer.dense, by) for layer in layers)

    def pick(t: float) -> list[Option]:
        chosen = []
        for layer in layers:
            s = layer.singular_values
            energy = np.cumsum(s**2) / max(float(np.sum(s**2)), np.finfo(float).tiny)
            rank = int(np.searchsorted(energy, t - 1e-12) + 1)
            factor = [o for o in layer.options if o.groups == 1 and o.rank == rank]
            chosen.append(factor[0] if factor else layer.dense)
        return chosen

    return _largest_fitting(pick, limit, by)


def _largest_fitting(pick, limit: float, by: str, steps: int = 60) -> list[Option]:
    """Bisection on a knob in [0, 1] for the largest value whose picks fit ``limit``."""
    lo, hi = 0.0, 1.0
    best = pick(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        chosen = pick(mid)
        if sum(_cost(o, by) for o in chosen) <= limit:
            lo, best = mid, chosen
        else:
            hi = mid
    return best


ALLOCATORS = {"alds": allocate_budget, "uniform": allocate_uniform, "energy": allocate_energy}

DP_UNITS = 4000  # cost resolution of ``allocate_min_total``: the budget in this many units (exact below it)


def allocate_min_total(layers: Sequence[LayerSpectrum], changes: Sequence[Sequence[float]], budget: float,
                       by: str = "params") -> list[Option]:
    """Options minimising the summed predicted output change (``changes[k][j]`` for option j of layer k) with
    total cost <= ``budget`` x the dense cost: a multiple-choice knapsack solved by dynamic programming over
    the cost, in at most DP_UNITS units (costs rounded up, so the choice always fits; exact when the budget
    is at most DP_UNITS). Where even the cheapest options do not fit, the cheapest ones."""
    dense = sum(_cost(layer.dense, by) for layer in layers)
    limit = budget * dense
    cheapest = [min(layer.options, key=lambda o: _cost(o, by)) for layer in layers]
    if total_cost(cheapest, by) > limit:
        return cheapest
    # whole-number costs are exact up to DP_UNITS units; seconds are always cut into DP_UNITS units
    unit = limit / DP_UNITS if by == "time" else max(1.0, limit / DP_UNITS)
    if unit <= 0:
        return cheapest
    capacity = int(np.floor(limit / unit + 1e-9))
    best = np.zeros(capacity + 1)  # best[c]: least summed change of the layers so far within cost c units
    picks = []
    for layer, change in zip(layers, changes):
        costs = [int(np.ceil(_cost(o, by) / unit - 1e-9)) for o in layer.options]
        table = np.full((len(costs), capacity + 1), np.inf)
        for j, (c, d) in enumerate(zip(costs, change)):
            if c <= capacity:
                table[j, c:] = best[:capacity + 1 - c] + d
        pick = np.argmin(table, axis=0)
        best = table[pick, np.arange(capacity + 1)]
        picks.append((pick, costs))
    chosen, c = [], capacity
    for layer, (pick, costs) in zip(reversed(layers), reversed(picks)):
        j = int(pick[c])
        chosen.append(layer.options[j])
        c -= costs[j]
    return chosen[::-1]


def total_cost(options: Sequence[Option], by: str = "params") -> int:
    return sum(_cost(o, by) for o in options)


def tradeoff(layers: Sequence[LayerSpectrum], budgets: Sequence[float]) -> list[tuple[float, float, float]]:
    """ALDS's trade-off curve: per weight budget, (budget, fraction of the dense weights kept, largest layer
    error). Empty without layers."""
    if not layers:
        return []
    dense = sum(layer.dense.params for layer in layers)
    curve = []
    for budget in budgets:
        chosen = allocate_budget(layers, budget)
        curve.append((budget, total_cost(chosen) / dense, max(o.error for o in chosen)))
    return curve
