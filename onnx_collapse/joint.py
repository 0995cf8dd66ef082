"""Channel pruning and low-rank truncation in one ``optimize`` run, under one accuracy target.

``optimize --prune-share S`` prunes S of the channels of every convolution pair (``prune.py``), then folds
and truncates the pruned model as ``optimize`` does, judging every verification against the original model
(or ``--reference``): what the user's criterion says holds for both steps together.

``--prune-share auto`` finds the largest share whose pruned model passes on its own (``prune --share auto``).
With ``--rank-budget auto`` too, that share would leave the budget search no slack, and a share of zero would
leave the pruning none: the split between the two is searched as well. The model pruned at that share and at
``FRACTIONS`` of it is optimized with its own budget search, and the run keeps the passing model that is
smallest in the budget metric (weights, MACs, or measured time). Each share tried is in the report
(``pruning.tried``), with the budget its search found.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import onnx

from . import timing
from .compare import verdict_text
from .errors import CollapseError, Param
from .graph import fixed_batch
from .io import (
    PROTOBUF_LIMIT,
    ModelSource,
    StagedOutput,
    TensorStore,
    embed_external_data,
    external_tensors,
    file_size,
    uses_external,
)
from .options import Options
from .progress import stage
from .prune import (
    calibration_rows,
    check_criterion,
    kept_at,
    prunable_pairs,
    prune,
    prune_model,
    removed_share,
)
from .report import PruneTrial, Pruning, Report, Verification, write_with_report
from .verify import ReferenceFailed, check_reference, reference_text, verify

FRACTIONS = (0.5, 0.75)  # with --rank-budget auto: shares tried beside the largest that passes alone
UNITS = {"params": "weights", "macs": "MACs", "time": "seconds per sample"}


def shares_to_try(largest: float, searched: bool) -> list[float]:
    """The shares optimized, largest first: ``largest`` (the given share, or the largest passing alone),
    and with a budget search (``searched``) the ``FRACTIONS`` of it; [0] when nothing can be pruned."""
    if largest <= 0:
        return [0.0]
    return [largest] + ([largest * f for f in sorted(FRACTIONS, reverse=True)] if searched else [])


def cost(report: Report, metric: str) -> float:
    """What the budget ``metric`` counts of the optimized model (time: measured seconds, else MACs)."""
    after = report.after
    if metric == "params":
        return after.params
    if metric == "time" and after.seconds is not None:
        return after.seconds
    return after.linear_macs


def prune_then_optimize(source: ModelSource, options: Options, output: str | os.PathLike | None,
                        external_data: bool | None, named, held_out: str | None,
                        report_file: str | os.PathLike | None = None) -> tuple[onnx.ModelProto, Report]:
    """``optimize`` with ``options.prune_share`` (see the module docstring); ``options`` have the verification
    rows split off already (``held_out`` says how, or None), ``named`` are the data files the output must
    not replace. The input is never modified; the output is written only if the kept model passed, in one
    commit with the JSON report at ``report_file`` (alone when no output is asked for)."""
    share = options.prune_share
    check_criterion(options, share, "prune_share")
    refuse_too_large(source.model)
    check_reference(source, options)  # an input that fails against --reference: said before any pruning
    staging = StagedOutput(output, external_data, source.base_dir, source, named) if output is not None \
        else nullcontext()  # the destination is checked before any work
    with staging as staged:
        out, report, passed = _search(source, options)
        inner = reference_text(options.with_overrides(reference=source.path or source.model))

        def plain(text: str) -> str:
            """The inner runs compared with the input model itself: said as the original model."""
            return text if options.reference is not None else text.replace(inner, ", compared with the original model")

        if report.verification is not None:
            where = report.verification.inputs
            if held_out is not None and where.startswith("the given inputs"):
                where = held_out + where.removeprefix("the given inputs")
            report.verification.inputs = plain(where)
        report.notes = [plain(n) for n in report.notes]
        if report.truncation is not None:
            report.truncation.summary = plain(report.truncation.summary)
        written = staged is not None and passed
        if written:
            with stage("writing the output"):
                staged.write(out)
            out = onnx.load(str(staged.staged), load_external_data=False)
            report.after.file_bytes = file_size(staged.staged)
        write_with_report(staged, report_file, report, written)
    return out, report


def _search(source: ModelSource, options: Options) -> tuple[onnx.ModelProto, Report, bool]:
    """The shares tried, each pruned and optimized; the kept model, its report (before: the original's), and
    whether it passed."""
    from .pipeline import model_stats, optimize, shape_probe

    share, model = options.prune_share, source.model
    original = source.path or model
    pairs = prunable_pairs(model)
    plain = options.with_overrides(prune_share=None)
    search: list[dict] = []
    notes: list[str] = []
    first = None  # the model the share search pruned at the largest share: not pruned again
    if not pairs:
        largest = 0.0
        notes.append("--prune-share: no convolution pair to prune; optimized without pruning")
    elif share == "auto":
        with stage("finding the largest prune share that passes alone"):
            first, found = prune(original, plain, share="auto")
        largest, search = found.share, found.search
        first = first if largest > 0 else None
        notes += [f"--prune-share auto: {n}" for n in found.notes]
    else:
        largest = float(share)
    rows = None  # read when a share is first pruned here
    inner = plain.with_overrides(reference=options.reference if options.reference is not None else original)
    probe = shape_probe(model, options)
    tried: list[PruneTrial] = []
    best = None  # (cost, share, model, report, passed)
    failed = None  # the first share whose pruned model failed alone: (share, model, verdict)
    made: dict[tuple[int, ...], float] = {}  # the channels each share tried keeps -> that share
    for value in shares_to_try(largest, share == "auto" and options.rank_budget == "auto"):
        same = made.setdefault(kept_at(pairs, value), value)
        if same != value:
            notes.append(f"--prune-share: share {value:.3g} keeps the channels share {same:.3g} keeps (whole blocks); "
                         "not tried again")
            continue
        with stage(f"pruning share {value:.3g}, then optimizing"):
            if value > 0:
                if value == largest and first is not None:
                    pruned, first = first, None
                else:
                    rows = rows if rows is not None else calibration_rows(model, options)
                    pruned = _in_memory(source, prune_model(source, pairs, value, rows)[0])
                try:
                    out, report = optimize(pruned, inner)
                except ReferenceFailed as exc:  # the pruned model alone already fails against the original
                    tried.append(PruneTrial(value, False, None, None, None,
                                            "pruned alone: " + verdict_text(exc.verdict)))
                    failed = failed or (value, pruned, exc.verdict)
                    continue
                if report.verification is not None and not report.verification.n_input_sets:
                    report.verification = _judged(inner.reference, out, options)  # nothing folded: the pruning's
                    report.verification.inputs += reference_text(inner)
            else:
                out, report = optimize(original, plain)
        passed = report.verification is None or report.verification.passed
        budget = report.truncation.budget if report.truncation is not None else None
        verdict = "not verified" if report.verification is None else verdict_text(report.verification)
        tried.append(PruneTrial(value, passed, budget, report.after.params, report.after.linear_macs, verdict))
        spent = cost(report, options.budget_metric)
        if best is None or (passed and (not best[4] or spent < best[0])):
            best = (spent, value, out, report, passed)
        del out, report
    if best is None:  # every share tried failed on its own (a share given, say): the first one's verdict
        value, out, verdict = failed
        with stage("counting parameters and MACs"):
            after = model_stats(ModelSource(out), probe)
        verdict.inputs += reference_text(inner)
        best = (None, value, out, Report(after, after, verification=verdict), False)
        notes.append(f"the model pruned at share {value:.3g} fails verification on its own, so no output could "
                     "pass; a smaller share or a looser criterion is needed")
    _, kept, out, report, passed = best
    report.pruning = Pruning(kept, len(pairs) if kept > 0 else 0, search, tried if len(tried) > 1 else [],
                             removed_share(pairs, kept) if kept > 0 else 0.0)
    if kept > 0 and passed:
        against = "reference" if options.reference is not None else "original"
        notes.append(f"pruned share {kept:.3g} of each of {len(pairs)} convolution pair(s) (whole blocks: "
                     f"{report.pruning.removed:.1%} of their channels), then optimized; verified against the "
                     f"{against} model")
    if len(tried) > 1:
        shown = "; ".join(f"{t.share:.3g}: " + (f"budget {t.budget:.3g}, " if t.budget is not None else "")
                          + (f"{t.params:,} weights, {t.linear_macs:,} MACs, " if t.params is not None else "")
                          + t.verdict for t in tried)
        outcome = (f"kept share {kept:.3g} (the fewest {UNITS[options.budget_metric]} that passed)" if passed else
                   "none passed")
        notes.append(f"--prune-share auto: largest share passing alone {largest:.3g}; each share tried with its "
                     f"own budget search: {shown}; {outcome}")
    report.notes = notes + report.notes
    with stage("counting parameters and MACs"):
        report.before = model_stats(source, probe)
    report.before.file_bytes = file_size(source.path) if source.path is not None else None
    if options.budget_metric == "time" and probe is not None and not probe.problem:
        with stage("timing the original model"):
            report.before.seconds = timing.model_seconds(source, probe, fixed_batch(model.graph))
    return out, report, passed


def _in_memory(source: ModelSource, pruned: ModelSource) -> onnx.ModelProto:
    """A pruned model as ``optimize`` reads it here: one protobuf, its external data (if any) embedded."""
    if uses_external(pruned.model):
        embed_external_data(pruned.model, source.base_dir)
    return pruned.model


def refuse_too_large(model: onnx.ModelProto) -> None:
    """CollapseError for a model whose pruned copies could not be one protobuf (over 2 GB with its data)."""
    size = model.ByteSize() + sum(TensorStore.nbytes(t) for t in external_tensors(model))
    if size > PROTOBUF_LIMIT:
        raise CollapseError(Param("prune_share"), " works on models up to 2 GB (this one is "
                            f"{size / 2**30:.1f} GB): run prune IN PRUNED, then optimize PRUNED with ",
                            Param("reference"), " IN")


def _judged(reference: onnx.ModelProto | Path, out: onnx.ModelProto, options: Options) -> Verification:
    """``out`` judged against ``reference`` on the verification rows, by the options' criterion."""
    return verify(reference, out, inputs=options.inputs, input_shapes=options.input_shapes, seed=options.seed,
                  check_n=options.check_n, atol=options.atol, rtol=options.rtol, metric=options.metric,
                  min_agreement=options.min_agreement, max_memory=options.max_verify_memory,
                  ctc_strip=options.ctc_strip, confidence=options.confidence, labels=options.labels,
                  max_drop=options.max_drop)
