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

import onnx

from .calibrate import load_arrays
from .compare import verdict_text
from .errors import CollapseError, Param
from .io import ModelSource, StagedOutput, embed_external_data, file_size, uses_external
from .options import Options
from .progress import stage
from .prune import check_criterion, prunable_pairs, prune, prune_model
from .report import PruneTrial, Pruning, Report
from .verify import ReferenceFailed

FRACTIONS = (0.5, 0.75)  # with --rank-budget auto: shares tried beside the largest that passes alone


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
                        external_data: bool | None, named, held_out: str | None
                        ) -> tuple[onnx.ModelProto, Report]:
    """``optimize`` with ``options.prune_share`` (see the module docstring); ``options`` have the verification
    rows split off already (``held_out`` says how, or None), ``named`` are the data files the output must
    not replace. The input is never modified; the output is written only if the kept model passed."""
    from .pipeline import model_stats, optimize, shape_probe

    share = options.prune_share
    check_criterion(options, share, "prune_share")
    model = source.model
    pairs = prunable_pairs(model)
    reference = options.reference if options.reference is not None else (source.path or model)
    plain = options.with_overrides(prune_share=None)
    search: list[dict] = []
    notes: list[str] = []
    if not pairs:
        largest = 0.0
        notes.append("--prune-share: no convolution pair to prune; optimized without pruning")
    elif share == "auto":
        with stage("finding the largest prune share that passes alone"):
            _, found = prune(source.path or model, plain, share="auto")
        largest, search = found.share, found.search
    else:
        largest = float(share)
    rows = load_arrays(model, options.calibrate, max_memory=options.max_verify_memory) if pairs and largest > 0 \
        else None
    tried: list[PruneTrial] = []
    best = None  # (cost, share, model, report)
    for value in shares_to_try(largest, share == "auto" and options.rank_budget == "auto"):
        with stage(f"pruning share {value:.3g}, then optimizing"):
            pruned = prune_model(source, pairs, value, rows)[0] if value > 0 else source
            if uses_external(pruned.model):
                embed_external_data(pruned.model, pruned.base_dir)  # the copy optimize reads is self-contained
            inner = plain.with_overrides(reference=reference) if value > 0 else plain
            try:
                out, report = optimize(pruned.model if value > 0 else (source.path or model), inner)
            except ReferenceFailed as exc:  # the pruned model alone already fails against the original
                if value <= 0:
                    raise
                tried.append(PruneTrial(value, False, None, None, None, "pruned alone: " + verdict_text(exc.verdict)))
                continue
        passed = report.verification is None or report.verification.passed
        budget = report.truncation.budget if report.truncation is not None else None
        verdict = "not verified" if report.verification is None else verdict_text(report.verification)
        tried.append(PruneTrial(value, passed, budget, report.after.params, report.after.linear_macs, verdict))
        spent = cost(report, options.budget_metric)
        if best is None or (passed and (not best[4] or spent < best[0])):
            best = (spent, value, out, report, passed)
        del out, report
    if best is None:  # every share tried failed on its own (a share given, say): nothing to optimize
        raise CollapseError("the model pruned at ", Param("prune_share", tried[0].share), " fails verification on "
                            f"its own ({tried[0].verdict.removeprefix('pruned alone: ')}), so no output could pass; "
                            "a smaller share or a looser criterion is needed")
    _, kept_share, out, report, passed = best
    report.pruning = Pruning(kept_share, len(pairs) if kept_share > 0 else 0, search,
                             tried if len(tried) > 1 else [])
    if len(tried) > 1:
        unit = {"params": "weights", "macs": "MACs", "time": "seconds per sample"}[options.budget_metric]
        shown = "; ".join(f"{t.share:.3g}: " + (f"budget {t.budget:.3g}, " if t.budget is not None else "")
                          + (f"{t.params:,} weights, {t.linear_macs:,} MACs, " if t.params is not None else "")
                          + t.verdict for t in tried)
        notes.append(f"--prune-share auto: largest share passing alone {largest:.3g}; each share tried with its "
                     f"own budget search: {shown}; kept share {kept_share:.3g} (the fewest {unit} that passed)")
    report.notes = notes + report.notes
    with stage("counting parameters and MACs"):
        report.before = model_stats(source, shape_probe(model, options))
    report.before.file_bytes = file_size(source.path) if source.path is not None else None
    if report.verification is not None and held_out is not None:
        report.verification.inputs = held_out + report.verification.inputs.removeprefix("the given inputs")
    if output is not None and passed:
        with stage("writing the output"), StagedOutput(output, external_data, source.base_dir, source,
                                                      named) as staged:
            staged.write(out)
            staged.commit()
        out = onnx.load(str(output), load_external_data=False)
        report.after.file_bytes = file_size(output)
    return out, report
