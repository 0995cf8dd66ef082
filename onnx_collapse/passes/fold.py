"""Pass: plan each segment's fold as one dense layer or an exact factor pair, whichever is cheaper."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx

from .. import linalg
from ..emit import RangeError
from ..kinds.base import EmissionFor
from ..plans import FoldPlan, Segment
from ..progress import advance
from ..report import FoldRecord
from .chains import chain_record
from .context import Context

MIN_OPSET = 7  # before 7, Gemm/Add broadcasting needed the `broadcast` attribute


@dataclass(frozen=True)
class Form:
    """How a folded map is stored: matrices applied in order, then the bias."""

    name: str  # "dense" or "factor"
    matrices: tuple[np.ndarray, ...]
    rank: int | None
    params: int
    macs: int
    dropped: float | None = None  # a factor pair: the largest singular value it leaves out (0.0 if none)


def cheapest_form(layers: list[linalg.Affine]) -> tuple[Form, linalg.Factored]:
    """The chain as one dense ``W`` or an exact factor pair ``A B`` (numerical rank), whichever is smaller;
    also the exact map as a Factored (for later truncation; a factor pair keeps its singular values).

    When the chain's narrowest dim is too wide for a factor pair to pay off, the dense product is formed
    and no SVD runs. Otherwise the chain is split at that dim and its SVD comes from QR of the two
    halves, so the (possibly large) dense product is never formed.
    """
    shapes = [layer.shape for layer in layers]
    n_in, n_out = shapes[0][0], shapes[-1][1]
    if linalg.rank_bound(shapes) > linalg.max_factor_rank(n_in, n_out):
        exact = linalg.compose(layers)
        has_bias = exact.bias is not None
        form = Form("dense", (exact.weight,), None, linalg.dense_params(n_in, n_out, has_bias),
                    linalg.dense_macs(n_in, n_out))
        return form, linalg.Factored((exact.weight,), exact.bias)
    split = linalg.compose_split(layers)
    u, s, vt = split.svd()
    rank = max(1, linalg.numerical_rank(s, (n_in, n_out)))
    has_bias = split.bias is not None
    form = Form("factor", linalg.factor_pair(u, s, vt, rank), rank,
                linalg.factor_params(n_in, n_out, rank, has_bias), linalg.factor_macs(n_in, n_out, rank),
                float(s[rank]) if rank < s.size else 0.0)
    return form, linalg.Factored(form.matrices, split.bias, s[:rank])


def shape_nodes(ctx: Context, links, x: str, y: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Copies of the shape-op ``links`` applied in order from ``x`` to ``y`` (the fold is per row, so the
    shape ops around it move outside it); their constant inputs are copied too, so the nodes stand alone."""
    nodes, inits, current = [], [], x
    for k, link in enumerate(links):
        original = ctx.view.proto.node[link.node]
        node = onnx.NodeProto()
        node.CopyFrom(original)
        node.name = ctx.fresh_name(original.name or original.op_type)
        node.input[0] = current
        current = y if k == len(links) - 1 else ctx.fresh_name(f"{node.name}.out")
        node.output[0] = current
        for j, name in enumerate(original.input[1:], start=1):
            value = ctx.view.as_initializer(name) if name else None
            if value is not None:
                value.name = ctx.fresh_name(name)
                node.input[j] = value.name
                inits.append(value)
        nodes.append(node)
    return nodes, inits


class PlanFolds:
    """Turns each segment into a FoldPlan, or a skipped record that says why not."""

    name = "plan-folds"

    @staticmethod
    def stage(options, contexts):
        n = sum(len(ctx.segments) for ctx in contexts)
        return ("folding the chains", n, "chain") if n else None

    def run(self, ctx: Context) -> None:
        for segment in ctx.segments:
            plan = self.plan(ctx, segment)
            if plan is not None:
                ctx.plans.append(plan)
            advance()

    def plan(self, ctx: Context, seg: Segment) -> FoldPlan | None:
        view = ctx.view
        record = chain_record(view, seg, "skipped", "", ctx.counted)
        ctx.records.append(record)
        if ctx.opset < MIN_OPSET:
            record.reason = f"opset {ctx.opset} is older than {MIN_OPSET}"
            return None
        head = seg.layers[0]
        maps = head.kind.fold_maps(view, seg, view.label(head.nodes[0]) + "/collapsed", ctx.opset)
        if isinstance(maps, str):
            record.reason = maps
            return None
        affines, emission_for = maps
        form, exact = cheapest_form(affines)
        form = replace(form, macs=form.macs * seg.layers[-1].layout.positions)  # per row, as the layers count them
        if not takes_form(record, form):
            return None
        plan = emit_plan(ctx, seg, record, form, exact, emission_for)
        if plan is not None and form.dropped is not None:
            record.exact_bound = form.dropped
            if form.dropped > 0:
                ctx.notes.append(exact_note(record, form.dropped))
        if plan is not None and not ctx.keep_exact:
            plan.exact = None  # its float64 matrices can be as large as the weights it replaces
        return plan


def exact_note(record: FoldRecord, dropped: float) -> str:
    """What "exact" means for a factor pair that leaves out directions: the directions whose singular values
    are below the float64 round-off of the largest one cannot be told from zero and are left out, so the fold
    is exact up to ``dropped`` times the norm of each input row (inputs far larger along them differ more)."""
    return (f"{record.layers[0]}: the exact factor pair (rank {record.rank}) leaves out directions with singular "
            f"values up to {dropped:.3g} (float64 round-off of the product); each output row may differ by up "
            f"to {dropped:.3g} x the input row's norm")


def takes_form(record: FoldRecord, form: Form) -> bool:
    """Record ``form`` as the chain's fold if it is smaller than the chain; else say why not (False)."""
    record.form, record.rank = form.name, form.rank
    record.params_after, record.macs_after = form.params, form.macs
    if form.params >= record.params_before or form.macs > record.macs_before:
        record.form = None
        record.reason = (f"no smaller form: best is {form.name}"
                         f"{'' if form.rank is None else f' rank {form.rank}'} with {form.params:,} params "
                         f"vs {record.params_before:,} in the chain")
        return False
    return True


def emit_plan(ctx: Context, seg: Segment, record: FoldRecord, form: Form, exact: linalg.Factored,
              emission_for: EmissionFor | None = None) -> FoldPlan | None:
    """The plan writing ``form`` (the map ``exact``) in place of the segment, shape ops before or after the
    segment written again around it; None (reason recorded) if a weight does not fit the dtype.
    ``emission_for`` defaults to the first layer's kind writing a fully connected map."""
    head = seg.layers[0]
    if emission_for is None:
        prefix, bias_rank = ctx.view.label(head.nodes[0]) + "/collapsed", max(layer.bias_rank for layer in seg.layers)
        emission_for = lambda has_bias, n: head.kind.emission(head, prefix, ctx.opset, bias_rank, has_bias, n)  # noqa: E731
    emission = emission_for(exact.bias is not None, len(form.matrices))
    prologue = [link for link in seg.lead if link.reshapes_to is not None]
    epilogue = [link for link in seg.trail if link.reshapes_to is not None]
    x = ctx.fresh_name(f"{emission.prefix}.in") if prologue else seg.input
    y = ctx.fresh_name(f"{emission.prefix}.out") if epilogue else seg.output
    try:
        nodes, inits = emission.linear(ctx.fresh_name, x, y, form.matrices, exact.bias, head.dtype)
        before, before_inits = shape_nodes(ctx, prologue, seg.input, x)
        after, after_inits = shape_nodes(ctx, epilogue, y, seg.output)
    except RangeError as exc:
        record.form, record.reason = None, str(exc)
        return None
    record.status = "folded"
    return FoldPlan(record, ctx.path, seg.node_positions(), seg.input, seg.output, before + nodes + after,
                    before_inits + inits + after_inits, head.dtype, exact, emission, emission_for=emission_for)
