"""Pictures for ``analyze --plot``: the ALDS trade-off and the per-layer ranks at one budget (matplotlib).

Imported only when a picture is asked for; matplotlib comes with the ``plot`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import allocate, io
from .allocate import LayerSpectrum
from .errors import CollapseError
from .progress import advance, reported, stage
from .report import cut_chain

DEFAULT_BUDGET = 0.5  # marked when the user gives no --rank-budget
CURVE_BUDGETS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))  # the trade-off curve's points
NAME_WIDTH = 32  # layer labels are cut to this many characters


def _figure_class():
    """matplotlib's Figure, or a CollapseError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CollapseError("--plot needs matplotlib: pip install 'onnx-collapse[plot]'") from None
    return Figure


def picture_format(path: Path) -> str:
    """The picture format named by ``path``'s suffix (png without one); CollapseError if matplotlib has
    no writer for it, or is not installed."""
    formats = _figure_class()().canvas.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".") or "png"
    if suffix not in formats:
        raise CollapseError(f"--plot {str(path)!r}: no picture format {suffix!r} (use one of "
                            f"{', '.join(sorted(formats))})")
    return suffix


def curve(spectra: Sequence[LayerSpectrum], tradeoff: Sequence[tuple[float, float, float]],
          budget: float) -> list[tuple[float, float, float]]:
    """The trade-off (budget, kept fraction, largest layer error) at ``tradeoff``'s budgets, the curve's
    budgets and ``budget``, sorted by budget."""
    known = {round(b, 6): (b, kept, err) for b, kept, err in tradeoff}
    wanted = sorted(({round(float(b), 6) for b in CURVE_BUDGETS} | {round(budget, 6)}) - set(known))
    with stage("trade-off curve", total=len(wanted)):
        for b in wanted:
            known[b] = allocate.tradeoff(spectra, [b])[0]
            advance()
    return [known[b] for b in sorted(known)]


def ranks_at(spectra: Sequence[LayerSpectrum], budget: float) -> list[allocate.Option]:
    """Each layer's storage option under ALDS at ``budget`` (a fraction of the dense weights)."""
    return allocate.allocate_budget(spectra, budget)


def _rank_label(layer: LayerSpectrum, option: allocate.Option) -> str:
    if option.rank is None:
        return f"dense ({min(layer.n_in, layer.n_out)})"
    groups = f"{option.groups} x " if option.groups > 1 else ""
    return f"{groups}r={option.rank}  err {option.error:.3f}"


def draw(spectra: Sequence[LayerSpectrum], tradeoff: Sequence[tuple[float, float, float]], budget: float):
    """A figure: the trade-off (largest layer error against weights kept) with ``budget`` marked, and
    every layer's rank at that budget against its full rank."""
    points = curve(spectra, tradeoff, budget)
    chosen = ranks_at(spectra, budget)
    rows = len(spectra)
    fig = _figure_class()(figsize=(11, max(4.0, 1.5 + 0.3 * rows)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.2))
    kept = [100 * k for _, k, _ in points]
    left.plot(kept, [e for _, _, e in points], marker="o", markersize=3, drawstyle="steps-post")
    mark = next(p for p in points if round(p[0], 6) == round(budget, 6))
    left.axvline(100 * budget, color="tab:red", linestyle="--", linewidth=1)
    left.plot([100 * mark[1]], [mark[2]], "o", color="tab:red")
    left.annotate(f"budget {budget:.0%}: keeps {mark[1]:.1%}\nlargest layer error {mark[2]:.3f}",
                  (100 * mark[1], mark[2]), textcoords="offset points", xytext=(8, 8), color="tab:red")
    left.set(xlabel="weights kept (% of the targeted layers' dense weights)",
             ylabel="largest relative layer error (ALDS)", title="ALDS trade-off", xlim=(0, 100), ylim=(0, None))
    left.grid(alpha=0.3)
    full = [min(s.n_in, s.n_out) for s in spectra]
    rank = [f if o.rank is None else o.rank * o.groups for f, o in zip(full, chosen)]
    y = np.arange(rows)
    right.barh(y, full, height=0.6, color="lightgray")
    right.barh(y, rank, height=0.6, color="tab:blue")
    for k, (layer, option) in enumerate(zip(spectra, chosen)):
        right.text(full[k], k, " " + _rank_label(layer, option), va="center", fontsize=8)
    right.set_yticks(y, [cut_chain(s.name, NAME_WIDTH) for s in spectra], fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, 1.35 * max(full))
    right.set(xlabel=f"rank (blue: kept at {budget:.0%}; gray: full rank)",
              title=f"per-layer ranks at {budget:.0%} of the weights")
    return fig


def save(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` in one rename (a temporary file beside it, then os.replace)."""
    try:
        with io.scratch_dir(path.parent, io.STAGING_PREFIX) as tmp:
            staged = Path(tmp) / path.name
            fig.savefig(staged, format=picture_format(path), dpi=100)
            os.replace(staged, path)
    except OSError as exc:
        raise CollapseError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


@reported
def plot_tradeoff(spectra: Sequence[LayerSpectrum], tradeoff: Sequence[tuple[float, float, float]],
                  path: str | os.PathLike, budget: float | None = None) -> None:
    """Draw the ALDS trade-off and the ranks at ``budget`` (default 50%) into the picture ``path``."""
    if not spectra:
        raise CollapseError("--plot: no low-rank targets to draw (use --low-rank all to include every "
                            "linear layer)")
    with stage("drawing"):
        fig = draw(spectra, tradeoff, DEFAULT_BUDGET if budget is None else budget)
    with stage("writing the picture"):
        save(fig, Path(path))
