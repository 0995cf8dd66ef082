"""Pass: for every layer that no plan folds, say why, naming the op that ended its chain; and for every
node of a layer op that is not a layer it can fold (a grouped Conv, a Gemm with transA), why not."""

from __future__ import annotations

from ..report import Unfolded
from .context import Context


class ExplainUnfolded:
    """Runs after every other pass (over all graphs, so low-rank plans count as folds)."""

    name = "explain"

    def run_all(self, contexts: list[Context]) -> None:
        for ctx in contexts:
            planned = {i for plan in ctx.plans for i in plan.removed}
            reasons = {label: r.reason for r in ctx.records for label in r.layers if r.reason}
            for layer in ctx.layers:
                if layer.nodes[0] in planned:
                    continue
                label = ctx.view.label(layer.nodes[0])
                reason = reasons.get(label) or ctx.stops.get(layer.nodes[0]) or "no layer follows it through links"
                ctx.unfolded.append(Unfolded(label, reason))
            ctx.unfolded += [Unfolded(label, reason) for label, reason in ctx.remarks]
