"""The optimizer: analysis passes -> rewrite -> verification with per-fold revert -> report."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from .allocate import LayerSpectrum
from .graph import GraphIndex, default_opset, infer_shapes, subgraphs
from .io import load_model
from .options import Options
from .passes import DEFAULT_PASSES
from .passes.base import Context, FoldPlan, Pass
from .passes.linear import FindLinearLayers
from .passes.lowrank import target_spectra
from .report import ModelStats, Report, Verification
from .rewrite import apply_plans
from .verify import compare_outputs, local_errors, make_feeds, run

BULK_REVERT = 8  # above this many locally failing folds, revert them all at once before going one by one


def as_model(model_or_path: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """A model we may own: loaded from a path, or a copy of the caller's ModelProto."""
    if isinstance(model_or_path, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model_or_path)
        return copy
    return load_model(model_or_path)


def run_passes(model: onnx.ModelProto, options: Options, passes: Sequence[Pass] = DEFAULT_PASSES) -> Context:
    """Analyse the main graph: every pass in order over one shared context."""
    ctx = Context(model, GraphIndex(model.graph, infer_shapes(model)), options, default_opset(model))
    for p in passes:
        p.run(ctx)
    return ctx


def _op_counts(graph: onnx.GraphProto, counts: Counter) -> Counter:
    for node in graph.node:
        counts[node.op_type] += 1
        for sub in subgraphs(node):
            _op_counts(sub, counts)
    return counts


def model_stats(model: onnx.ModelProto) -> ModelStats:
    """Op counts (subgraphs included), stored parameters, and MACs per row of recognised linear layers."""
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    params += sum(int(np.prod(a.t.dims)) for n in model.graph.node if n.op_type == "Constant"
                  for a in n.attribute if a.name == "value")
    ctx = Context(model, GraphIndex(model.graph), Options(), default_opset(model))
    FindLinearLayers().run(ctx)
    macs = sum(lin.n_in * lin.n_out for lin in ctx.linears)
    return ModelStats(dict(sorted(_op_counts(model.graph, Counter()).items())), params, macs)


def _badness(plan: FoldPlan) -> float:
    err = plan.record.error
    return 0.0 if err is None else err.required_atol / max(err.atol, np.finfo(np.float64).tiny)


def _verify_and_revert(
    model: onnx.ModelProto, ctx: Context, options: Options
) -> tuple[onnx.ModelProto, Verification]:
    """Apply every plan, then revert the worst folds one by one until the outputs match.

    A truncated plan is reverted to its exact fold (its fallback); an exact fold to the original nodes.
    """
    feeds, source = make_feeds(model, options.inputs, options.input_shapes, options.seed, options.check_n)
    expected = run(model, feeds, "original model")
    every = [q for p in ctx.plans for q in (p, p.fallback) if q is not None]
    probes = [(p.input, p.output, p.nodes, p.initializers, onnx.helper.np_dtype_to_tensor_dtype(p.dtype))
              for p in every]
    for plan, err in zip(every, local_errors(model, probes, feeds, options.atol, options.rtol)):
        plan.record.error = err
    accepted = list(ctx.plans)
    local_failures = [p for p in accepted if p.record.error is not None and not p.record.error.passed]
    while True:
        candidate = apply_plans(model, ctx.index, accepted)
        actual = run(candidate, feeds, "optimized model")
        verification = compare_outputs(expected, actual, options.atol, options.rtol, source, options.metric,
                                       options.min_agreement)
        if verification.passed or not accepted:
            return candidate, verification
        if len(local_failures) > BULK_REVERT:
            to_revert, local_failures = local_failures, []
        else:
            to_revert = [max(accepted, key=_badness)]
        for plan in to_revert:
            position = next(i for i, p in enumerate(accepted) if p is plan)
            plan.record.status = "reverted"
            err = plan.record.error
            plan.record.reason = (f"the model fails verification with this fold; its own max abs error is "
                                  f"{err.max_abs:.2e} (needs atol {err.required_atol:.1e})")
            if plan.fallback is None:
                accepted.pop(position)
            else:
                accepted[position] = plan.fallback
                plan.record.reason += "; kept the exact fold instead"
                where = next(i for i, r in enumerate(ctx.records) if r is plan.record)
                ctx.records.insert(where + 1, plan.fallback.record)


def optimize(
    model_or_path: onnx.ModelProto | str | os.PathLike, options: Options | None = None, **overrides
) -> tuple[onnx.ModelProto, Report]:
    """Fold near-linear chains of ``model_or_path`` and verify the result in onnxruntime.

    ``options`` (or keyword ``overrides`` of its fields) controls slopes, tolerance and inputs.
    Returns the optimized model (the input is never modified) and a report. With verification on,
    folds that break the tolerance are reverted, so the returned model passes; ``report.verification``
    says by how much. Raises CollapseError for bad input.
    """
    options = replace(options or Options(), **overrides)
    model = as_model(model_or_path)
    ctx = run_passes(model, options)
    if not ctx.plans:
        out, verification = apply_plans(model, ctx.index, []), Verification(True, 0, "the model is unchanged")
    elif options.verify:
        out, verification = _verify_and_revert(model, ctx, options)
    else:
        out, verification = apply_plans(model, ctx.index, ctx.plans), None
    report = Report(model_stats(model), model_stats(out), ctx.records, verification, ctx.notes)
    return out, report


@dataclass
class Analysis:
    """What ``analyze`` found: the report (folds marked "foldable" or "skipped"), remarks on layers
    outside any chain, and the truncation targets' spectra (the low-rank trade-off)."""

    report: Report
    remarks: list[tuple[str, str]]
    spectra: list[LayerSpectrum]


def analyze(model_or_path: onnx.ModelProto | str | os.PathLike, options: Options | None = None,
            **overrides) -> Analysis:
    """Every chain found, with predicted savings and why each would or would not fold; nothing is run."""
    options = replace(options or Options(), rank_budget=None, max_error=None, **overrides)
    model = as_model(model_or_path)
    ctx = run_passes(model, options)
    for record in ctx.records:
        if record.status == "folded":
            record.status = "foldable"
    stats = model_stats(model)
    _, spectra = target_spectra(ctx)
    return Analysis(Report(stats, stats, ctx.records, None, ctx.notes), ctx.remarks, spectra)
