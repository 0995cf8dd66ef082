"""Pass: plan each segment's fold as one dense layer or an exact factor pair, whichever is cheaper."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx

from .. import linalg
from ..candidates import Candidate, Chain, Outcome
from ..emit import RangeError
from ..kinds import Regroup
from ..kinds.base import EmissionFor
from ..plans import FoldPlan, Segment
from ..progress import advance
from .chains import candidate_for
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
    """Makes each segment a candidate, with its fold as its first form when one is smaller than the chain."""

    name = "plan-folds"

    @staticmethod
    def stage(options, contexts):
        n = sum(len(ctx.segments) for ctx in contexts)
        return ("folding the chains", n, "chain") if n else None

    def run(self, ctx: Context) -> None:
        for segment in ctx.segments:
            candidate = candidate_for(ctx, segment, counted=ctx.counted)
            ctx.candidates.append(candidate)
            plan = self.plan(ctx, candidate)
            if plan is not None:
                candidate.push(plan)
            advance()

    def plan(self, ctx: Context, candidate: Candidate) -> FoldPlan | None:
        """The exact fold of ``candidate``'s segment, or None (its outcome says why not)."""
        view, seg, outcome = ctx.view, candidate.segment, candidate.outcome
        if ctx.opset < MIN_OPSET:
            outcome.reason = f"opset {ctx.opset} is older than {MIN_OPSET}"
            return None
        head = seg.layers[0]
        maps = head.kind.fold_maps(view, seg, view.label(head.nodes[0]) + "/collapsed", ctx.opset)
        if isinstance(maps, str):
            outcome.reason = maps
            return None
        affines, emission_for = maps
        form, exact = cheapest_form(affines)
        form = replace(form, macs=form.macs * seg.layers[-1].layout.positions)  # per row, as the layers count them
        if not takes_form(outcome, form, candidate.chain):
            return None
        plan = emit_plan(ctx, seg, outcome, form, exact, emission_for)
        if plan is not None and form.dropped is not None:
            outcome.exact_bound = form.dropped
            if form.dropped > 0:
                ctx.notes.append(exact_note(candidate.chain, form.rank, form.dropped))
        if plan is not None and not ctx.keep_exact:
            plan.exact = None  # its float64 matrices can be as large as the weights it replaces
        return plan


def exact_note(chain: Chain, rank: int | None, dropped: float) -> str:
    """What "exact" means for a factor pair that leaves out directions: the directions whose singular values
    are below the float64 round-off of the largest one cannot be told from zero and are left out, so the fold
    is exact up to ``dropped`` times the norm of each input row (inputs far larger along them differ more)."""
    return (f"{chain.layers[0]}: the exact factor pair (rank {rank}) leaves out directions with singular "
            f"values up to {dropped:.3g} (float64 round-off of the product); each output row may differ by up "
            f"to {dropped:.3g} x the input row's norm")


def takes_form(outcome: Outcome, form: Form, chain: Chain) -> bool:
    """Record ``form`` in ``outcome`` if it is smaller than ``chain``; else say why not (False)."""
    outcome.form, outcome.rank = form.name, form.rank
    outcome.params_after, outcome.macs_after = form.params, form.macs
    if form.params >= chain.params_before or form.macs > chain.macs_before:
        outcome.form = None
        outcome.reason = (f"no smaller form: best is {form.name}"
                          f"{'' if form.rank is None else f' rank {form.rank}'} with {form.params:,} params "
                          f"vs {chain.params_before:,} in the chain")
        return False
    return True


def emit_plan(ctx: Context, seg: Segment, outcome: Outcome, form: Form, exact: linalg.Factored,
              emission_for: EmissionFor) -> FoldPlan | None:
    """The plan writing ``form`` (the map ``exact``) in place of the segment as ``emission_for`` writes it
    (the segment's first kind's ``fold_maps`` says how), shape ops before or after the segment written again
    around it, with ``outcome``; None (reason in ``outcome``) if a weight does not fit the dtype."""
    head = seg.layers[0]
    emission = emission_for(exact.bias is not None, len(form.matrices))
    try:
        nodes, inits = written_around(ctx, seg, emission.prefix, lambda x, y: emission.linear(
            ctx.fresh_name, x, y, form.matrices, exact.bias, head.dtype))
    except RangeError as exc:
        outcome.form, outcome.reason = None, str(exc)
        return None
    return FoldPlan(outcome, ctx.path, seg.node_positions(), seg.input, seg.output, nodes, inits, head.dtype, exact,
                    emission, emission_for=emission_for)


def written_around(ctx: Context, seg: Segment, prefix: str, write) -> tuple[list[onnx.NodeProto],
                                                                         list[onnx.TensorProto]]:
    """The nodes (and new tensors) of ``write(x, y)``, which computes the segment's map per row from ``x`` to
    ``y``, with the segment's shape ops before its first layer or after its last written again around it
    (``x``/``y`` are then new names; else the segment's input and output). Raises what ``write`` raises."""
    prologue = [link for link in seg.lead if isinstance(link.map, Regroup)]
    epilogue = [link for link in seg.trail if isinstance(link.map, Regroup)]
    x = ctx.fresh_name(f"{prefix}.in") if prologue else seg.input
    y = ctx.fresh_name(f"{prefix}.out") if epilogue else seg.output
    nodes, inits = write(x, y)
    before, before_inits = shape_nodes(ctx, prologue, seg.input, x)
    after, after_inits = shape_nodes(ctx, epilogue, y, seg.output)
    return before + nodes + after, before_inits + inits + after_inits
