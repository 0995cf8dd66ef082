"""Pass: plan each segment's fold as one dense layer or an exact factor pair, whichever is cheaper."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import linalg
from ..emit import Emission, RangeError, linear_nodes
from .base import Context, FoldPlan, Linear, Segment
from .chains import chain_record

MIN_OPSET = 7  # before 7, Gemm/Add broadcasting needed the `broadcast` attribute


@dataclass(frozen=True)
class Form:
    """How a folded map is stored: matrices applied in order, then the bias."""

    name: str  # "dense" or "factor"
    matrices: tuple[np.ndarray, ...]
    rank: int | None
    params: int
    macs: int


def cheapest_form(affine: linalg.Affine, shapes: list[tuple[int, int]]) -> Form:
    """Dense ``W`` or exact factor pair ``A B`` (numerical rank), whichever has fewer parameters.

    The SVD runs only when the rank bound (the chain's narrowest dim) could make a factor pair smaller.
    """
    n_in, n_out = affine.shape
    has_bias = affine.bias is not None
    dense = Form("dense", (affine.weight,), None, linalg.dense_params(n_in, n_out, has_bias),
                 linalg.dense_macs(n_in, n_out))
    if linalg.rank_bound(shapes) > linalg.max_factor_rank(n_in, n_out):
        return dense
    u, s, vt = linalg.svd(affine.weight)
    rank = max(1, linalg.numerical_rank(s, (n_in, n_out)))
    a, b = linalg.factor_pair(u, s, vt, rank)
    factor = Form("factor", (a, b), rank, linalg.factor_params(n_in, n_out, rank, has_bias),
                  linalg.factor_macs(n_in, n_out, rank))
    return min((dense, factor), key=lambda f: (f.params, f.macs))


class PlanFolds:
    """Turns each segment into a FoldPlan, or a skipped record that says why not."""

    name = "plan-folds"

    def run(self, ctx: Context) -> None:
        for segment in ctx.segments:
            plan = self.plan(ctx, segment)
            if plan is not None:
                ctx.plans.append(plan)

    def plan(self, ctx: Context, seg: Segment) -> FoldPlan | None:
        record = chain_record(ctx.index, seg.linears, seg.links, "skipped", "")
        ctx.records.append(record)
        if ctx.opset < MIN_OPSET:
            record.reason = f"opset {ctx.opset} is older than {MIN_OPSET}"
            return None
        affine = linalg.compose([lin.affine for lin in seg.linears])
        form = cheapest_form(affine, [lin.affine.shape for lin in seg.linears])
        record.form, record.rank = form.name, form.rank
        record.params_after, record.macs_after = form.params, form.macs
        if form.params >= record.params_before or form.macs > record.macs_before:
            record.form = None
            record.reason = (f"no smaller form: best is {form.name}"
                             f"{'' if form.rank is None else f' rank {form.rank}'} with {form.params:,} params "
                             f"vs {record.params_before:,} in the chain")
            return None
        head = seg.linears[0]
        emission = emission_for(ctx, head, max(lin.bias_rank for lin in seg.linears),
                                exact_matrices=len(form.matrices), has_bias=affine.bias is not None)
        removed = tuple(sorted({i for lin in seg.linears for i in lin.nodes} | {i for lk in seg.links for i in lk.nodes}))
        try:
            nodes, inits = linear_nodes(ctx.fresh_name, emission, head.input, seg.linears[-1].output,
                                        form.matrices, affine.bias, head.dtype)
        except RangeError as exc:
            record.form, record.reason = None, str(exc)
            return None
        record.status = "folded"
        return FoldPlan(record, removed, head.input, seg.linears[-1].output, nodes, inits, head.dtype, affine,
                        emission)


def emission_for(ctx: Context, head: Linear, bias_rank: int, exact_matrices: int, has_bias: bool) -> Emission:
    """Gemm for 2-D inputs whose biases keep the output 2-D (Gemm without C needs opset 11); else MatMul."""
    use_gemm = head.is_gemm and bias_rank <= 2 and (ctx.opset >= 11 or (exact_matrices == 1 and has_bias))
    rank = 2 if head.is_gemm else ctx.index.rank(head.input)
    return Emission(ctx.index.label(head.nodes[0]) + "/collapsed", use_gemm, bias_rank, rank)
