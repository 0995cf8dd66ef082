"""The optimizer: analysis passes over every graph -> rewrite -> verification with per-fold revert -> report."""

from __future__ import annotations

import functools
import gc
import os
import shutil
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import onnx

from . import allocate, calibrate, macs, timing
from .accuracy import check_labels_file
from .candidates import applied
from .candidates import records as candidate_records
from .errors import CollapseError, Param
from .graph import (
    GraphView,
    default_opset,
    fixed_batch,
    import_model,
    infer_shapes,
    walk_graphs,
    weight_count,
)
from .io import (
    ModelSource,
    StagedOutput,
    TensorStore,
    check_overwrite,
    check_report_file,
    data_files,
    dense_bytes,
    embed_external_data,
    file_size,
    open_model,
    same_file,
    uses_external,
)
from .options import Options, given_options
from .passes import DEFAULT_PASSES, GLOBAL_PASSES, SPECTRUM_PASSES
from .passes.context import Context, GlobalPass, Pass, all_names, pass_stage, reads_exact
from .passes.explain import verdict
from .progress import reported, stage
from .report import Analysis, ModelStats, Report, Verification, truncation_outcome, write_with_report
from .revert import return_free_memory, verify_and_revert
from .rewrite import apply_plans
from .runner import run_scratch
from .verify import check_reference, reference_text


def views_for(source: ModelSource, probe: macs.ShapeProbe | None = None) -> list[tuple[tuple, GraphView]]:
    """A view of every graph of the model (main graph with inferred shapes, then subgraphs), by path.

    With ``probe``, the main graph's layer shapes that inference leaves unknown are measured in one
    onnxruntime run on it (``macs.measure``), to count costs."""
    model = source.model
    imported = import_model(model)
    shapes = infer_shapes(model)
    measured, batch = {}, 1
    if probe is not None:
        unknown = macs.unknown_tensors(model.graph, shapes)
        if unknown:
            with stage("measuring layer sizes"):
                try:
                    measured, batch = macs.measure(source, unknown, probe), probe.batch
                except CollapseError as exc:  # counting is never a reason to fail: the note says what happened
                    probe.problem = str(exc)
    store = TensorStore(source.base_dir)
    views = [(path, GraphView(graph, imported.proto_of(graph), store, shapes if not path else {}, prefix,
                              measured if not path else None, batch))
             for path, prefix, graph in walk_graphs(imported.graph)]
    by_path = dict(views)
    for path, view in views:  # parents come first: a subgraph reads its outer scopes' overridable weights too
        if path:
            view.overridable |= by_path[path[:-1]].overridable
    return views


def shape_probe(model: onnx.ModelProto, options: Options) -> macs.ShapeProbe | None:
    """The input set that layer sizes are measured on (see ``macs.probe_for``)."""
    return macs.probe_for(model, options.calibrate, options.inputs, options.input_shapes, options.seed,
                          options.max_verify_memory, declared=options.budget_metric == "time")


def refuse_unmeasured_costs(source: ModelSource, options: Options, probe: macs.ShapeProbe | None) -> None:
    """A MAC or time budget needs each layer's real size: CollapseError when some depend on the input and
    nothing to measure them on was given (they would count one position each)."""
    if not options.truncates or options.budget_metric not in ("macs", "time") or probe is not None:
        return
    uncounted = model_stats(source).macs_uncounted
    if uncounted:
        raise CollapseError(Param("budget_metric", options.budget_metric), f" needs each layer's size, but "
                            f"{len(uncounted)} layer(s) have sizes that depend on the input ({', '.join(uncounted[:3])}"
                            f"{', ...' if len(uncounted) > 3 else ''}); give ", Param("input_shapes"), ", ",
                            Param("inputs"), " or ", Param("calibrate"), " to measure them")


def contexts_for(source: ModelSource, options: Options, probe: macs.ShapeProbe | None = None) -> list[Context]:
    """One analysis context per graph: the main graph and every subgraph (layer sizes measured on ``probe``)."""
    model = source.model
    names = all_names(model.graph)
    opset = default_opset(model)
    return [Context(model, view, options, opset, path, names) for path, view in views_for(source, probe)]


def run_passes(source: ModelSource, options: Options, passes: Sequence[Pass] = DEFAULT_PASSES,
               global_passes: Sequence[GlobalPass] = GLOBAL_PASSES, probe: macs.ShapeProbe | None = None
               ) -> list[Context]:
    """Analyse every graph: each pass in order over each graph, then the passes that see all graphs.
    Layer sizes that shape inference leaves unknown are measured on ``probe``."""
    with stage("reading the graph"):
        contexts = contexts_for(source, options, probe)
    keep = reads_exact([*passes, *global_passes], options)
    for ctx in contexts:
        ctx.keep_exact = keep
    for ctx in contexts:
        for p in passes:
            with pass_stage(p, options, [ctx]):
                p.run(ctx)
    for p in global_passes:
        with pass_stage(p, options, contexts):
            p.run_all(contexts)
    return contexts


def model_stats(model: onnx.ModelProto | ModelSource, probe: macs.ShapeProbe | None = None) -> ModelStats:
    """Op counts and stored parameters (floating-point tensors; subgraphs included) and MACs per sample of
    every Conv, Gemm and MatMul, counted from the shapes the model has for ``probe``'s inputs where
    inference does not know them (one onnxruntime run).

    Reads shapes only, never weight values (the probe run reads them where it is needed).
    """
    source = model if isinstance(model, ModelSource) else ModelSource(model)
    return stats_of([view for _, view in views_for(source, probe)], probe)


def stats_of(views: Sequence[GraphView], probe: macs.ShapeProbe | None = None) -> ModelStats:
    """``model_stats`` over views already made of every graph of a model (the analysis contexts' views)."""
    params = 0
    counts: Counter = Counter()
    count = macs.MacCount()
    for view in views:
        proto = view.proto
        counts.update(node.op_type for node in proto.node)
        stored = [*proto.initializer, *(a.t for n in proto.node if n.op_type == "Constant"
                                         for a in n.attribute if a.name == "value")]
        params += sum(weight_count(t) for t in stored)
        found = macs.count(proto, view.shapes, view.measured, view.batch, view.label)
        count.total += found.total
        count.per_node.update(found.per_node)
        count.uncounted += found.uncounted
    basis = probe.basis if probe is not None and any(v.measured for v in views) else "static shapes"
    return ModelStats(dict(sorted(counts.items())), params, count.total, macs_basis=basis,
                      macs_uncounted=count.uncounted, layer_macs=count.per_node)


def _warnings_as_notes(func):
    """``func`` with the Python warnings raised inside (by onnx, numpy) added as notes to the report it
    returns, instead of printed on stderr."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = func(*args, **kwargs)
        report = result.report if isinstance(result, Analysis) else result[1]
        report.notes += [f"warning: {text}" for text in dict.fromkeys(" ".join(str(w.message).split()) for w in caught)]
        return result

    return wrapper


@reported
@_warnings_as_notes
@run_scratch()
def optimize(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    options: Options | None = None,
    *,
    output: str | os.PathLike | None = None,
    external_data: bool | None = None,
    report_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    **overrides,
) -> tuple[onnx.ModelProto, Report]:
    """Fold near-linear chains of ``model_or_path`` and verify the result in onnxruntime.

    ``options`` (or keyword ``overrides`` of its fields) controls slopes, tolerance, inputs and low-rank
    truncation. With ``output``, the result is written there atomically (external data beside it when
    the input had external data, when ``external_data`` is True, or when it exceeds 1.8 GB), and only if
    it passed verification; a path input's external data is then never loaded whole into memory.
    Returns the optimized model and a report. With verification on, folds that break the tolerance are
    reverted, so the returned model passes; ``report.verification`` says by how much. With ``report_file``,
    the report is written there as JSON, in one commit with the output (both or neither; alone when no
    output is asked for). The input is never modified (an ``output`` that is the input file is refused unless
    ``overwrite``). Raises CollapseError for bad input.
    """
    options = given_options(options).with_overrides(**overrides)
    with stage("loading the model"):
        source = open_model(model_or_path)
    model = source.model
    if external_data is None and uses_external(model):
        external_data = True
    named = data_files(options.inputs, options.calibrate, options.reference, options.labels)  # files the output must not replace
    check_overwrite(output, source.path, overwrite)
    check_report_file(report_file, source, named, output)
    check_labels_file(model, options.labels, options.inputs)
    options, held_out = calibration_split(model, options)
    if options.prune_share is not None:  # pruning first, then all of the below on the pruned model
        from .joint import prune_then_optimize

        return prune_then_optimize(source, options, output, external_data, named, held_out, report_file)
    # a reference that cannot be met fails before any work; its outputs are not held through the passes
    check_reference(source, options)
    probe = shape_probe(model, options)
    refuse_unmeasured_costs(source, options, probe)
    contexts = run_passes(source, options, probe=probe)
    return_free_memory()  # the passes' float64 work, before the output is built
    candidates = [c for ctx in contexts for c in ctx.candidates]
    plans = applied(candidates)
    staging = StagedOutput(output, external_data, source.base_dir, source, named) if output is not None else nullcontext()
    held = sum(dense_bytes(t) for p in plans for t in p.initializers)  # the plans' new tensors in memory
    with staging as staged:
        if not plans:
            out, verification = model, Verification(True, 0, "the model is unchanged")
        elif options.verify:
            with stage("verifying in onnxruntime"):
                out, verification = verify_and_revert(source, contexts, options, staged)
        else:
            out, verification = apply_plans(model, plans, move=True), None
        for candidate in candidates:  # ``out`` holds the new tensors now: keep one copy of them in memory
            candidate.release()
        if held > RELEASE_COLLECT_BYTES:
            gc.collect()  # the imported graphs that referenced them are cycles of nodes and tensors
            return_free_memory()
        if held_out is not None and verification is not None and verification.n_input_sets:
            verification.inputs = held_out
        if verification is not None and verification.n_input_sets:
            verification.inputs += reference_text(options)
        records = candidate_records(candidates)
        notes = [n for ctx in contexts for n in ctx.notes]
        if model.functions:
            notes.append(f"{len(model.functions)} model-local function(s) left as they are: "
                         + ", ".join(f.name for f in model.functions))
        unfolded = [u for ctx in contexts for u in ctx.unfolded]
        with stage("counting parameters and MACs"):
            before = stats_of([ctx.view for ctx in contexts], probe)
        report = Report(before, replace(before), records, verification, notes, unfolded)
        if options.truncates:
            budget = options.rank_budget
            goal = (f"--max-error {options.max_error:g}" if budget is None else
                    f"--rank-budget {budget if isinstance(budget, str) else format(budget, 'g')}")
            report.truncation = truncation_outcome(goal, records, verification, options.inputs is not None,
                                                   contexts[0].budget if contexts else None,
                                                   contexts[0].over_budget if contexts else None)
        report.before.file_bytes = file_size(source.path) if source.path is not None else None
        written = None
        if staged is not None and (verification is None or verification.passed):
            with stage("writing the output"):
                _stage_output(staged, source, out, unchanged=not plans)
            out = onnx.load(str(staged.staged), load_external_data=False)
            written = ModelSource(out, staged.staged.parent, staged.staged)  # the output, before its commit
        elif staged is None and uses_external(out):
            embed_external_data(out, source.base_dir)
        if out is not model:
            with stage("counting parameters and MACs"):
                report.after = model_stats(written or ModelSource(out, source.base_dir), probe)
        if written is not None:
            report.after.file_bytes = file_size(staged.staged)
        if options.budget_metric == "time" and probe is not None and not probe.problem:
            with stage("timing the model before and after"):
                batch = fixed_batch(model.graph)
                report.before.seconds = timing.model_seconds(source, probe, batch)
                report.after.seconds = report.before.seconds if out is model else \
                    timing.model_seconds(written or ModelSource(out, source.base_dir), probe, batch)
        _note_uncounted(report, probe)
        write_with_report(staged, report_file, report, written is not None)
        return out, report


def _note_uncounted(report: Report, probe: macs.ShapeProbe | None) -> None:
    """Say which layers' MACs are not counted, and how to count them."""
    missing = report.before.macs_uncounted
    if missing:
        report.notes.append(f"MACs: {len(missing)} layer(s) not counted, their size depends on the input "
                            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                            + (f"measuring them failed: {probe.problem}" if probe is not None and probe.problem else
                               "give --input-shape, --inputs or --calibrate to measure them"))
    elif report.after.macs_uncounted:  # measuring the optimized model failed where the original's worked
        report.notes.append(f"MACs of the optimized model: {len(report.after.macs_uncounted)} layer(s) not counted"
                            + (f" ({probe.problem})" if probe is not None and probe.problem else ""))
    elif report.before.macs_basis != "static shapes":
        report.notes.append(f"MACs counted at {report.before.macs_basis}")


def calibration_split(model: onnx.ModelProto, options: Options) -> tuple[Options, str | None]:
    """With ``calibrate`` and verification but no ``inputs``: hold a seeded fifth of the calibration rows out
    for verification (the rest calibrates), and the phrase the report gives for it. Calibration and
    verification never share rows; naming one file for both is refused."""
    data = options.calibrate
    if data is None or not options.verify:
        return options, None
    if options.inputs is not None:
        if not isinstance(data, Mapping) and not isinstance(options.inputs, Mapping) and \
                same_file(Path(data), Path(options.inputs)):
            raise CollapseError(Param("inputs"), " and ", Param("calibrate"), " name the same file (by path or link); "
                                "verification needs data the calibration did not see (leave out ", Param("inputs"),
                                " to hold out rows automatically)")
        return options, None
    arrays = calibrate.load_arrays(model, data, max_memory=options.max_verify_memory)
    kept, held = calibrate.split_rows(arrays, options.seed)
    n_held, n = calibrate.row_count(held), calibrate.row_count(arrays)
    phrase = (f"{n_held} of {n} rows of {calibrate.describe(data)} held out (seed {options.seed}); the other "
              f"{n - n_held} calibrated the folds")
    return options.with_overrides(calibrate=kept, inputs=held), phrase


def _stage_output(staged: StagedOutput, source: ModelSource, out: onnx.ModelProto, unchanged: bool) -> None:
    """Write the output into its staging folder (not yet committed); an unchanged single-file model is
    copied byte for byte."""
    if unchanged and source.path is not None and not uses_external(source.model) and not staged.external_data:
        shutil.copyfile(source.path, staged.staged)
    elif not staged.staged.exists():
        staged.write(out, consume=out is not source.model)  # the caller loads the written model back


RELEASE_COLLECT_BYTES = 64 * 2**20  # new tensors worth a garbage collection to free once the output holds them
TRADEOFF_BUDGETS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


@reported
@_warnings_as_notes
def analyze(model_or_path: onnx.ModelProto | str | os.PathLike, options: Options | None = None, *,
            spectrum: bool = False, **overrides) -> Analysis:
    """Every chain found, with predicted savings and why each would or would not fold; nothing is run.

    ``spectrum``: also compute the low-rank targets' singular values (``options.low_rank`` picks them).
    """
    goals = [k for k in ("rank_budget", "max_error") if overrides.get(k) is not None]
    if goals:
        raise CollapseError(Param(goals[0]), " is for optimize: analyze plans folds only (its spectrum option shows "
                            "what truncation would cost)")
    options = given_options(options).with_overrides(**{**overrides, "rank_budget": None, "max_error": None})
    with stage("loading the model"):
        source = open_model(model_or_path)
    probe = shape_probe(source.model, options)
    contexts = run_passes(source, options, SPECTRUM_PASSES if spectrum else DEFAULT_PASSES, probe=probe)
    candidates = [c for ctx in contexts for c in ctx.candidates]
    records = candidate_records(candidates, proposed=True)
    plans = applied(candidates)
    with stage("counting parameters and MACs"):
        before = stats_of([ctx.view for ctx in contexts], probe)
    notes = [n for c in contexts for n in c.notes]
    after = model_stats(ModelSource(apply_plans(source.model, plans), source.base_dir), probe) \
        if plans else before  # shared tensors counted once
    spectra = [s for ctx in contexts for s in ctx.spectra]
    report = Report(before, after, records, None, notes, [u for c in contexts for u in c.unfolded])
    _note_uncounted(report, probe)
    return Analysis(report, [r for c in contexts for r in c.remarks], spectra,
                    allocate.tradeoff(spectra, TRADEOFF_BUDGETS), verdict(report, options.slope_tol))
