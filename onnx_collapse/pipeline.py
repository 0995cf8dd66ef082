"""The optimizer: analysis passes over every graph -> rewrite -> verification with per-fold revert -> report."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import onnx

from . import allocate
from .allocate import LayerSpectrum
from .graph import GraphView, default_opset, import_model, infer_shapes, walk_graphs
from .io import (
    ModelSource,
    StagedOutput,
    TensorStore,
    embed_external_data,
    file_size,
    open_model,
    uses_external,
)
from .options import Options
from .passes import DEFAULT_PASSES, GLOBAL_PASSES, SPECTRUM_PASSES
from .passes.context import Context, GlobalPass, Pass, all_names
from .passes.layers import find_layers
from .plans import FoldPlan
from .progress import reported, stage
from .report import ModelStats, Report, Verification
from .rewrite import apply_plans
from .verify import (
    capture,
    chain_model,
    compare,
    compare_outputs,
    local_errors,
    make_feeds,
    random_feeds,
    run,
)

BULK_REVERT = 8  # above this many locally failing folds, revert them all at once before going one by one


def views_for(source: ModelSource) -> list[tuple[tuple, GraphView]]:
    """A view of every graph of the model (main graph with inferred shapes, then subgraphs), by path."""
    model = source.model
    imported = import_model(model)
    shapes = infer_shapes(model)
    store = TensorStore(source.base_dir)
    return [(path, GraphView(graph, imported.proto_of(graph), store, shapes if not path else {}, prefix))
            for path, prefix, graph in walk_graphs(imported.graph)]


def contexts_for(source: ModelSource, options: Options) -> list[Context]:
    """One analysis context per graph: the main graph and every subgraph."""
    model = source.model
    names = all_names(model.graph)
    opset = default_opset(model)
    return [Context(model, view, options, opset, path, names) for path, view in views_for(source)]


def run_passes(source: ModelSource, options: Options, passes: Sequence[Pass] = DEFAULT_PASSES,
               global_passes: Sequence[GlobalPass] = GLOBAL_PASSES) -> list[Context]:
    """Analyse every graph: each pass in order over each graph, then the passes that see all graphs."""
    with stage("reading the graphs"):
        contexts = contexts_for(source, options)
    for ctx in contexts:
        for p in passes:
            with stage(p.name):
                p.run(ctx)
    for p in global_passes:
        with stage(p.name):
            p.run_all(contexts)
    return contexts


def model_stats(model: onnx.ModelProto) -> ModelStats:
    """Op counts and stored parameters (subgraphs included) and MACs per row of recognised linear layers.

    Reads shapes only, never weight values.
    """
    params = macs = 0
    counts: Counter = Counter()
    for _, view in views_for(ModelSource(model)):
        proto = view.proto
        counts.update(node.op_type for node in proto.node)
        params += sum(int(np.prod(t.dims, dtype=np.int64)) for t in proto.initializer)
        params += sum(int(np.prod(a.t.dims, dtype=np.int64)) for n in proto.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value")
        macs += sum(layer.n_in * layer.n_out for layer in find_layers(view)[0])
    return ModelStats(dict(sorted(counts.items())), params, macs)


def _badness(plan: FoldPlan) -> float:
    err = plan.record.error
    return 0.0 if err is None else err.required_atol / max(err.atol, np.finfo(np.float64).tiny)


def _elem(plan: FoldPlan) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(plan.dtype)


def _measure_folds(source: ModelSource, views: dict, plans: list[FoldPlan], feeds, options: Options):
    """Every plan's own error in onnxruntime, and the original model's outputs (captured in the same run).

    Main-graph folds run on the inputs their chain really saw; folds inside subgraphs (whose tensors a
    model output cannot expose) run on seeded random inputs against the original chain.
    """
    main = [p for p in plans if not p.graph]
    names = [n for p in main for n in (p.input, p.output)]
    captured = capture(source, names, {n: _elem(p) for p in main for n in (p.input, p.output)}, feeds)
    model = source.model
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    probes = [(p.input, p.output, p.nodes, p.initializers, _elem(p)) for p in main]
    for plan, err in zip(main, local_errors(opsets, model.ir_version, probes, captured, options.atol, options.rtol)):
        plan.record.error = err
    for plan in (p for p in plans if p.graph):
        plan.record.error = _subgraph_fold_error(source, views[plan.graph], plan, opsets, options)
    outputs = {o.name for o in model.graph.output}
    return [{k: v for k, v in c.items() if k in outputs} for c in captured]


def _subgraph_fold_error(source: ModelSource, view: GraphView, plan: FoldPlan, opsets, options: Options):
    """A subgraph fold's error: the original chain and the folded one on the same random inputs."""
    original = [view.proto.node[i] for i in plan.removed]
    produced = {n for node in original for n in node.output}
    consts = sorted({n for node in original for n in node.input if n and n not in produced and view.is_constant(n)})
    elem, ir_version = _elem(plan), source.model.ir_version
    x_shape = [4] * ((plan.emit.input_rank or 2) - 1) + [plan.exact.shape[0]]
    reference = chain_model(plan.input, plan.output, original, [view.as_initializer(n) for n in consts], elem,
                            opsets, ir_version, x_shape)
    ref_source = ModelSource(reference, source.base_dir)
    feeds = random_feeds(reference, {}, options.seed, options.check_n)
    expected = run(ref_source, feeds, "original chain")
    folded = chain_model(plan.input, plan.output, plan.nodes, plan.initializers, elem, opsets, ir_version)
    got = run(ModelSource(folded), feeds, "folded chain")
    return compare(plan.output, [e[plan.output] for e in expected], [g[plan.output] for g in got],
                   options.atol, options.rtol)


def _verify_and_revert(source: ModelSource, contexts: list[Context], options: Options,
                       staged: StagedOutput | None) -> tuple[onnx.ModelProto, Verification]:
    """Apply every plan, then revert the worst folds one by one until the outputs match.

    A truncated plan is reverted to its exact fold (its fallback); an exact fold to the original nodes.
    With ``staged``, each candidate is written there and onnxruntime reads it from disk.
    """
    model = source.model
    plans = [p for ctx in contexts for p in ctx.plans]
    feeds, where = make_feeds(model, options.inputs, options.input_shapes, options.seed, options.check_n)
    every = [q for p in plans for q in (p, p.fallback) if q is not None]
    owners = {ctx.path: ctx for ctx in contexts}
    views = {path: ctx.view for path, ctx in owners.items()}
    expected = _measure_folds(source, views, every, feeds, options)
    accepted = list(plans)
    local_failures = [p for p in accepted if p.record.error is not None and not p.record.error.passed]
    while True:
        candidate = apply_plans(model, accepted)
        if staged is not None:
            runnable = ModelSource(candidate, None, staged.write(candidate))
        else:
            runnable = ModelSource(candidate, source.base_dir)
        actual = run(runnable, feeds, "optimized model")
        verification = compare_outputs(expected, actual, options.atol, options.rtol, where, options.metric,
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
                continue
            accepted[position] = plan.fallback
            plan.record.reason += "; kept the exact fold instead"
            records = owners[plan.graph].records
            records.insert(next(i for i, r in enumerate(records) if r is plan.record) + 1, plan.fallback.record)


@reported
def optimize(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    options: Options | None = None,
    *,
    output: str | os.PathLike | None = None,
    external_data: bool | None = None,
    **overrides,
) -> tuple[onnx.ModelProto, Report]:
    """Fold near-linear chains of ``model_or_path`` and verify the result in onnxruntime.

    ``options`` (or keyword ``overrides`` of its fields) controls slopes, tolerance, inputs and low-rank
    truncation. With ``output``, the result is written there atomically (external data beside it when
    the input had external data, when ``external_data`` is True, or when it exceeds 1.8 GB), and only if
    it passed verification; a path input's external data is then never loaded whole into memory.
    Returns the optimized model and a report. With verification on, folds that break the tolerance are
    reverted, so the returned model passes; ``report.verification`` says by how much. The input is
    never modified. Raises CollapseError for bad input.
    """
    options = (options or Options()).with_overrides(**overrides)
    with stage("loading the model"):
        source = open_model(model_or_path)
    model = source.model
    if external_data is None and uses_external(model):
        external_data = True
    contexts = run_passes(source, options)
    plans = [p for ctx in contexts for p in ctx.plans]
    staging = StagedOutput(output, external_data, source.base_dir, source) if output is not None else nullcontext()
    with staging as staged:
        if not plans:
            out, verification = model, Verification(True, 0, "the model is unchanged")
        elif options.verify:
            with stage("verifying in onnxruntime"):
                out, verification = _verify_and_revert(source, contexts, options, staged)
        else:
            out, verification = apply_plans(model, plans), None
        records = [r for ctx in contexts for r in ctx.records]
        notes = [n for ctx in contexts for n in ctx.notes]
        if model.functions:
            notes.append(f"{len(model.functions)} model-local function(s) left as they are: "
                         + ", ".join(f.name for f in model.functions))
        unfolded = [u for ctx in contexts for u in ctx.unfolded]
        with stage("counting"):
            report = Report(model_stats(model), model_stats(out), records, verification, notes, unfolded)
        report.before.file_bytes = file_size(source.path) if source.path is not None else None
        if staged is not None and (verification is None or verification.passed):
            with stage("writing the output"):
                _write_output(staged, source, out, unchanged=not plans)
            report.after.file_bytes = file_size(output)
            out = onnx.load(str(output), load_external_data=False)
        elif staged is None and uses_external(out):
            embed_external_data(out, source.base_dir)
        return out, report


def _write_output(staged: StagedOutput, source: ModelSource, out: onnx.ModelProto, unchanged: bool) -> None:
    """Commit the staged output; an unchanged single-file model is copied byte for byte."""
    if unchanged and source.path is not None and not uses_external(source.model) and not staged.external_data:
        shutil.copyfile(source.path, staged.staged)
    elif not staged.staged.exists():
        staged.write(out)
    staged.commit()


TRADEOFF_BUDGETS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


@dataclass
class Analysis:
    """What ``analyze`` found: the report (folds marked "foldable" or "skipped"), remarks on layers
    outside any chain, and with ``spectrum=True`` the truncation targets' spectra and the ALDS trade-off
    (weight budget, fraction kept, largest layer error)."""

    report: Report
    remarks: list[tuple[str, str]]
    spectra: list[LayerSpectrum]
    tradeoff: list[tuple[float, float, float]]


@reported
def analyze(model_or_path: onnx.ModelProto | str | os.PathLike, options: Options | None = None, *,
            spectrum: bool = False, **overrides) -> Analysis:
    """Every chain found, with predicted savings and why each would or would not fold; nothing is run.

    ``spectrum``: also compute the low-rank targets' singular values (``options.low_rank`` picks them).
    """
    options = (options or Options()).with_overrides(rank_budget=None, max_error=None, **overrides)
    with stage("loading the model"):
        source = open_model(model_or_path)
    contexts = run_passes(source, options, SPECTRUM_PASSES if spectrum else DEFAULT_PASSES)
    records = [r for ctx in contexts for r in ctx.records]
    for record in records:
        if record.status == "folded":
            record.status = "foldable"
    plans = [p for ctx in contexts for p in ctx.plans]
    with stage("counting"):
        before = model_stats(source.model)
        after = model_stats(apply_plans(source.model, plans)) if plans else before  # shared tensors counted once
    spectra = [s for ctx in contexts for s in ctx.spectra]
    report = Report(before, after, records, None, [n for c in contexts for n in c.notes],
                    [u for c in contexts for u in c.unfolded])
    return Analysis(report,
                    [r for c in contexts for r in c.remarks], spectra, allocate.tradeoff(spectra, TRADEOFF_BUDGETS))
