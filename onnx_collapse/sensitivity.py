"""Output-aware rank allocation: how much each truncation changes the model's output, measured.

Each target layer is truncated alone at a short ladder of ranks and the whole model is run on a few
calibration rows; the relative change of its outputs is measured against the original's. Between and
beyond the ladder, the change of any storage option is predicted from the option's own relative layer
error ``e`` (the whitened one where calibrated): piecewise linear in ``e**2`` through the measured points
(a small perturbation's output change grows with its energy). ``allocate.allocate_min_total`` then picks
the options whose summed predicted change is least under the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from .allocate import LayerSpectrum, Option
from .runner import needed_nodes, part_model

LADDER = (0.15, 0.3, 0.55)  # ranks measured, as fractions of the largest factor rank
ROWS = 16  # calibration rows the changes are measured on
BATCH = 8


@dataclass(frozen=True)
class Ladder:
    """Measured output changes of one layer: ``errors[k]`` (the option's layer error) -> ``changes[k]``."""

    errors: tuple[float, ...]
    changes: tuple[float, ...]

    def predict(self, error: float) -> float:
        """The output change predicted for an option of layer error ``error`` (0 for the dense layer)."""
        if error <= 0 or not self.errors:
            return 0.0
        order = np.argsort(self.errors)
        x = np.concatenate([[0.0], np.square(np.asarray(self.errors)[order])])
        y = np.concatenate([[0.0], np.maximum(np.asarray(self.changes)[order], 0.0)])
        y = np.maximum.accumulate(y)  # a larger layer error never predicts a smaller change
        e2 = error * error
        if e2 <= x[-1]:
            return float(np.interp(e2, x, y))
        slope = y[-1] / x[-1] if x[-1] > 0 else 0.0
        return float(y[-1] + slope * (e2 - x[-1]))


def ladder_options(spectrum: LayerSpectrum, fractions: Sequence[float] = LADDER) -> list[Option]:
    """The ungrouped options to measure: ranks nearest to ``fractions`` of the largest factor rank."""
    pairs = [o for o in spectrum.options if o.rank is not None and o.groups == 1]
    if not pairs:
        return []
    top = max(o.rank for o in pairs)
    wanted = {max(1, round(f * top)) for f in fractions}
    picked = {min(pairs, key=lambda o, r=r: abs(o.rank - r)).rank: None for r in wanted}
    return [o for o in pairs if o.rank in picked]


def output_change(expected: Sequence[Mapping[str, np.ndarray]], actual: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Relative change of the outputs: sum of squared differences over the outputs' squared deviation from
    their means (so outputs on any scale count alike), over all input sets. Non-finite differences count
    as infinitely large."""
    num = den = 0.0
    for want, got in zip(expected, actual):
        for name, ref in want.items():
            ref = np.asarray(ref, dtype=np.float64)
            diff = np.asarray(got[name], dtype=np.float64) - ref
            if not np.all(np.isfinite(diff)):
                return float("inf")
            num += float(np.sum(diff * diff))
            den += float(np.sum(np.square(ref - ref.mean()))) if ref.size else 0.0
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def calibration_feeds(arrays: Mapping[str, np.ndarray], rows: int = ROWS, batch: int = BATCH
                      ) -> list[dict[str, np.ndarray]]:
    """The first ``rows`` calibration rows as input sets of ``batch`` rows."""
    n = min(rows, next(iter(arrays.values())).shape[0]) if arrays else 0
    return [{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, n, batch)]


def downstream(model: onnx.ModelProto, start: str, elem_type: int) -> tuple[onnx.ModelProto, dict[int, int]] | None:
    """The part of ``model``'s main graph that computes its outputs once tensor ``start`` (of element type
    ``elem_type``) is given: a model with inputs ``start`` and the original inputs, and the new position
    of each node kept (by old position). None when the model has subgraphs (the caller then runs the whole
    model)."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return None
    kept, _ = needed_nodes(graph, [o.name for o in graph.output], {start})
    declared = next((i for i in graph.input if i.name == start), None)
    inputs = [*(i for i in graph.input if i.name != start),
              declared or onnx.helper.make_tensor_value_info(start, elem_type, None)]
    cut = part_model(model, kept, inputs, graph.output)
    return cut, {old: new for new, old in enumerate(kept)}
