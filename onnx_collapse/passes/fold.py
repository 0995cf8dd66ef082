"""Pass: plan each segment's fold as one dense layer or an exact factor pair, whichever is cheaper."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import linalg
from ..emit import RangeError
from ..plans import FoldPlan, Segment
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
                linalg.factor_params(n_in, n_out, rank, has_bias), linalg.factor_macs(n_in, n_out, rank))
    return form, linalg.Factored(form.matrices, split.bias, s[:rank])


def segment_affines(view, seg: Segment) -> list[linalg.Affine]:
    """The segment's layers as affine maps, each affine link multiplied into the layer after it (links
    after the last layer into that layer)."""
    affines = []
    gaps = [seg.lead, *seg.links]
    for gap, layer in zip(gaps, seg.layers):
        affine = layer.affine(view)
        elementwise = linalg.combine_elementwise((link.scale, link.shift) for link in gap)
        affines.append(affine if elementwise is None else linalg.elementwise_then(*elementwise, affine))
    trailing = linalg.combine_elementwise((link.scale, link.shift) for link in seg.trail)
    if trailing is not None:
        affines[-1] = linalg.then_elementwise(affines[-1], *trailing)
    return affines


class PlanFolds:
    """Turns each segment into a FoldPlan, or a skipped record that says why not."""

    name = "plan-folds"

    def run(self, ctx: Context) -> None:
        for segment in ctx.segments:
            plan = self.plan(ctx, segment)
            if plan is not None:
                ctx.plans.append(plan)

    def plan(self, ctx: Context, seg: Segment) -> FoldPlan | None:
        view = ctx.view
        record = chain_record(view, seg, "skipped", "")
        ctx.records.append(record)
        if ctx.opset < MIN_OPSET:
            record.reason = f"opset {ctx.opset} is older than {MIN_OPSET}"
            return None
        form, exact = cheapest_form(segment_affines(view, seg))
        if not takes_form(record, form):
            return None
        return emit_plan(ctx, seg, record, form, exact)


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


def emit_plan(ctx: Context, seg: Segment, record: FoldRecord, form: Form, exact: linalg.Factored) -> FoldPlan | None:
    """The plan writing ``form`` (the map ``exact``) in place of the segment; None (reason recorded) if a
    weight does not fit the dtype."""
    head = seg.layers[0]
    emission = head.kind.emission(head, ctx.view.label(head.nodes[0]) + "/collapsed", ctx.opset,
                                  max(layer.bias_rank for layer in seg.layers), exact.bias is not None,
                                  len(form.matrices))
    try:
        nodes, inits = emission.linear(ctx.fresh_name, seg.input, seg.output, form.matrices, exact.bias,
                                       head.dtype)
    except RangeError as exc:
        record.form, record.reason = None, str(exc)
        return None
    record.status = "folded"
    return FoldPlan(record, ctx.path, seg.node_positions(), seg.input, seg.output, nodes, inits, head.dtype,
                    exact, emission)
