"""Pass: for every layer that no plan folds, say why, naming the op that ended its chain; and for every
node of a layer op that is not a layer it can fold (a grouped Conv, a Gemm with transA), why not.

Also the verdict ``analyze`` ends with: what onnx-collapse can do for the model, in a user's words.
"""

from __future__ import annotations

from ..candidates import applied
from ..graph import GraphView
from ..kinds import link_kind_for
from ..report import Report, Unfolded
from .context import Context

# activations LayerCollapse training replaces by PReLU (then driven to slope 1, the identity)
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu", "Gelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh",
                         "Softplus", "HardSigmoid", "HardSwish", "Mish", "ThresholdedRelu"})


def ended_by(view: GraphView, tensor: str) -> str | None:
    """The op type of the first node after ``tensor`` that is not a link (where one node reads on)."""
    for _ in range(64):
        i = view.sole_reader(tensor)
        if i is None:
            return None
        node = view.nodes[i]
        if link_kind_for(node) is None or node.op in ACTIVATIONS:
            return node.op
        if not node.outputs:
            return None
        tensor = node.outputs[0].name
    return None


class ExplainUnfolded:
    """Runs after every other pass (over all graphs, so low-rank plans count as folds)."""

    name = "explain"

    @staticmethod
    def stage(options, contexts):
        return None  # instant

    def run_all(self, contexts: list[Context]) -> None:
        for ctx in contexts:
            planned = {i for plan in applied(ctx.candidates) for i in plan.removed}
            reasons = {label: c.shown.reason for c in ctx.candidates if c.reported
                       for label in c.chain.layers if c.shown.reason}
            for layer in ctx.layers:
                if layer.nodes[0] in planned:
                    continue
                label = ctx.view.label(layer.nodes[0])
                reason = reasons.get(label) or ctx.stops.get(layer.nodes[0]) or "no layer follows it through links"
                ctx.unfolded.append(Unfolded(label, reason, ended_by(ctx.view, layer.output)))
            ctx.unfolded += [Unfolded(label, reason) for label, reason in ctx.remarks]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _layers(labels: list[str], most: int = 3) -> str:
    shown = ", ".join(labels[:most])
    return shown + (f" and {len(labels) - most} more" if len(labels) > most else "")


def verdict(report: Report, slope_tol: float) -> list[str]:
    """What onnx-collapse can do for the model ``analyze`` described, one sentence each: what folds as it
    is, what could fold after LayerCollapse training (and how), what truncation could save, or that
    nothing applies and why."""
    foldable = [f for f in report.folds if f.status == "foldable"]
    exact = [f for f in foldable if all(lo == hi == 1.0 for lo, hi in f.slopes)]
    near = [f for f in foldable if f not in exact]
    far = [f for f in report.folds if f.status == "skipped" and f.slopes]
    trainable = sorted({u.ended_by for u in report.unfolded if u.ended_by in ACTIVATIONS - {"PRelu", "LeakyRelu"}})
    at_act = [u.layer for u in report.unfolded if u.ended_by in ACTIVATIONS - {"PRelu", "LeakyRelu"}]
    layers = {label for f in report.folds for label in f.layers} | {u.layer for u in report.unfolded}
    lines = []
    if exact:
        lines.append(f"folds as it is: {_count(len(exact), 'chain')} ({_layers([' > '.join(f.layers) for f in exact])})"
                     " with only linear ops between or around the layers (slope-1 activations, BatchNorm, "
                     "per-feature scaling); `onnx-collapse optimize IN OUT` makes each chain one layer, exactly, "
                     "and verifies it.")
    if near:
        slopes = sorted({v for f in near for pair in f.slopes for v in pair if v != 1.0})
        lines.append(f"folds approximately: {_count(len(near), 'chain')} with slopes near 1 ({slopes[0]:.3g}"
                     + (f"..{slopes[-1]:.3g}" if len(slopes) > 1 else "") + "); folding changes the outputs a "
                     "little, so optimize keeps a fold only if it passes the tolerance: verify on your data "
                     "(--inputs val.npz --metric top1), or fit the fold to it (--calibrate calib.npz).")
    if report.before.params != report.after.params:
        lines.append(f"predicted: parameters {report.before.params:,} -> {report.after.params:,}, "
                     f"MACs per sample {report.before.linear_macs:,} -> {report.after.linear_macs:,}"
                     + (f" (and {len(report.before.macs_uncounted)} layer(s) whose size depends on the input, not "
                        "counted)." if report.before.macs_uncounted else "."))
    if far or at_act:
        what = []
        if at_act:
            what.append(f"{_count(len(at_act), 'layer')} ({_layers(at_act)}) followed by {'/'.join(trainable)}")
        if far:
            what.append(f"{_count(len(far), 'chain')} with slopes too far from 1 (beyond --slope-tol {slope_tol:g})")
        lines.append("could fold after LayerCollapse training: " + "; ".join(what) + ". Fine-tune with the "
                     "torch extra (onnx_collapse.torch: make_collapsible, collapse_penalty, snap_slopes, "
                     "export_onnx) so these activations become PReLU slopes of 1, then optimize the export.")
    if layers:
        lines.append(f"truncation could shrink the {_count(len(layers), 'linear or convolutional layer')}, "
                     "at some accuracy: `optimize --low-rank all --rank-budget 0.5 --calibrate "
                     "calib.npz` (judge the trade-off first with `analyze --spectrum --low-rank all`; verify on "
                     "your data with --inputs val.npz --metric top1).")
    else:
        lines.append("nothing applies: onnx-collapse found no fully connected (Gemm, MatMul with a constant "
                     "weight) or convolutional layer it can fold or truncate; the model would come back "
                     "unchanged.")
    return lines
