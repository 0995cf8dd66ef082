"""Pass: store layers as truncated (optionally grouped) factor pairs, ranks chosen globally (ALDS).

Runs only when the user sets ``rank_budget`` or ``max_error``. Targets are the collapsed products
(default) or, with ``low_rank="all"``, every linear layer. Truncation changes the function: each new
plan records its predicted error, keeps the exact plan as a fallback, and verification decides.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from .. import allocate, calibrate, linalg, sensitivity
from ..compare import compare_outputs
from ..emit import RangeError, cast_checked
from ..graph import fixed_batch
from ..inputs import make_feeds
from ..io import ModelSource
from ..kinds import Layer
from ..plans import FoldPlan, Segment
from ..progress import advance, stage
from ..rewrite import apply_plans
from ..runner import capture, run
from .chains import chain_record
from .context import Context


def _targets(ctx: Context) -> list[FoldPlan]:
    """Exact plans to consider, plus (with low_rank="all") identity 'plans' for single linear layers."""
    targets = list(ctx.plans)
    if ctx.options.low_rank == "all":
        taken = {i for seg in ctx.segments for layer in seg.layers for i in layer.nodes}
        for layer in ctx.layers:
            if layer.nodes[0] not in taken:
                targets.append(_single(ctx, layer))
    return targets


def count_targets(contexts: list[Context]) -> int:
    """How many targets ``_targets`` gives over ``contexts`` (the progress display's total), building none."""
    n = 0
    for ctx in contexts:
        taken = {i for seg in ctx.segments for layer in seg.layers for i in layer.nodes}
        n += len(ctx.plans) + (sum(layer.nodes[0] not in taken for layer in ctx.layers)
                               if ctx.options.low_rank == "all" else 0)
    return n


def target_whitening(ctx: Context, target: FoldPlan) -> linalg.Whitening | None:
    """The target's output-error metric on the calibration data (None: data-free), computed once per target."""
    key = (target.input, target.exact.bias is not None, target.emit.patches)
    if key not in ctx.whitenings:
        ctx.whitenings[key] = calibrate.input_whitening(ctx.calibration, *key)
    return ctx.whitenings[key]


def target_spectra(ctx: Context) -> tuple[list[FoldPlan], list[allocate.LayerSpectrum]]:
    """The truncation targets and their storage options (grouping only for inputs of known rank >= 2);
    spectra of the whitened weights where the target's inputs were calibrated (activation-aware ALDS)."""
    targets, spectra = [], []
    for t in _targets(ctx):
        name = " > ".join(t.record.layers)
        try:
            found = allocate.spectrum(name, t.exact, ctx.options.error_metric,
                                      ctx.options.max_groups if (t.emit.input_rank or 0) >= 2 else 1,
                                      t.emit.group_unit, target_whitening(ctx, t))
        except (linalg.NonFiniteError, np.linalg.LinAlgError) as exc:  # LAPACK refuses NaN and inf
            ctx.notes.append(f"{name}: no low-rank form: its weights have no spectrum ({exc})")
            continue
        targets.append(t)
        spectra.append(at_positions(found, t.emit.positions))
    return targets, spectra


def at_positions(spectrum: allocate.LayerSpectrum, positions: int) -> allocate.LayerSpectrum:
    """``spectrum`` with each option's MACs counted per row of the model: a convolution runs its matrices
    once per output position."""
    if positions == 1:
        return spectrum
    return replace(spectrum, options=tuple(replace(o, macs=o.macs * positions) for o in spectrum.options))


def _single(ctx: Context, layer: Layer) -> FoldPlan:
    """A placeholder plan for an unfolded layer (no nodes: it is never applied as is)."""
    record = chain_record(ctx.view, Segment([layer], [], input=layer.input, output=layer.output), "skipped", "")
    record.form, record.params_after, record.macs_after = "dense", record.params_before, record.macs_before
    emission = layer.kind.emission(layer, ctx.view.label(layer.nodes[0]) + "/lowrank", ctx.opset, layer.bias_rank,
                                   layer.bias is not None, 2)
    affine = layer.affine(ctx.view)
    if affine.scale != 1.0:  # otherwise the stored weight (possibly a file view) is read in slices when needed
        affine = linalg.compose([affine])
    exact = linalg.Factored((affine.weight,), affine.bias)
    return FoldPlan(record, ctx.path, layer.nodes, layer.input, layer.output, [], [], layer.dtype, exact, emission)


def _current_params(plan: FoldPlan) -> int:
    """Weights of the plan's current form, its bias not counted (as the options count them)."""
    return plan.record.params_after - (0 if plan.exact.bias is None else plan.exact.bias.size)


def truncated_plan(ctx: Context, exact: FoldPlan, option: allocate.Option, error: float,
                   factors=None) -> FoldPlan | None:
    """A plan storing ``exact.exact`` with ``option``'s (grouped) rank; None if it does not fit the dtype.
    ``factors``: ``linalg.nested_truncations`` of the target, to slice instead of factorizing again."""
    whiten = target_whitening(ctx, exact)
    try:
        if option.groups == 1:
            a, b, bias = (factors or (lambda r: linalg.truncate(exact.exact, r, whiten)))(option.rank)
            a = cast_checked(a, exact.dtype)  # each float64 factor gives way to its stored form (memory)
            b = cast_checked(b, exact.dtype)
            nodes, inits = exact.emit.linear(ctx.fresh_name, exact.input, exact.output, (a, b), bias,
                                             exact.dtype)
        else:
            first, second, bias = linalg.truncate_grouped(exact.exact.dense(), option.groups, option.rank,
                                                          exact.exact.bias, whiten)
            nodes, inits = exact.emit.grouped(ctx.fresh_name, exact.input, exact.output, first, second, bias,
                                              exact.dtype)
    except RangeError as exc:
        ctx.notes.append(f"{' > '.join(exact.record.layers)}: low-rank form skipped: {exc}")
        return None
    bias_params = 0 if bias is None else bias.size
    record = replace(exact.record, status="folded", reason="", form="grouped" if option.groups > 1 else "truncated",
                     rank=option.rank, params_after=option.params + bias_params, macs_after=option.macs,
                     predicted_error=error, error=None)
    if option.groups > 1:
        record.reason = f"{option.groups} groups"
    if whiten is not None:
        record.reason = ", ".join(filter(None, [record.reason, "activation-aware (calibrated)"]))
    return FoldPlan(record, exact.graph, exact.removed, exact.input, exact.output, nodes, inits, exact.dtype, exact.exact,
                    exact.emit, fallback=exact if exact.nodes else None)


def _position(items: list, item) -> int:
    return next(i for i, x in enumerate(items) if x is item)


class LowRank:
    """Replaces exact plans (and, on request, single layers) by truncated factor pairs under a global budget."""

    name = "low-rank"

    @staticmethod
    def stage(options, contexts):
        if options.rank_budget is None and options.max_error is None:
            return None
        return "low-rank truncation: each layer's spectrum, then the factors", count_targets(contexts), "layer"

    @staticmethod
    def reads_exact(options) -> bool:
        return options.rank_budget is not None or options.max_error is not None

    def run_all(self, contexts: list[Context]) -> None:
        if not contexts:
            return
        opts = contexts[0].options
        if opts.rank_budget is None and opts.max_error is None:
            return
        owners, targets, spectra = [], [], []
        for ctx in contexts:
            found, found_spectra = target_spectra(ctx)
            owners += [ctx] * len(found)
            targets += found
            spectra += found_spectra
        main = contexts[0]
        if not targets:
            main.notes.append("no low-rank target: no " + ("linear layer" if opts.low_rank == "all" else
                                                          "folded chain") + " to truncate")
            return
        if opts.rank_budget is None:
            chosen = allocate.allocate_max_error(spectra, opts.max_error, opts.budget_metric)
        else:
            allocate_at, describe = self.allocator(contexts, owners, targets, spectra)
            if opts.rank_budget == "auto":
                budget, chosen = search_budget(contexts, owners, targets, spectra, allocate_at)
            else:
                budget, chosen = opts.rank_budget, allocate_at(opts.rank_budget)
            if describe is not None:
                main.notes.append(describe(chosen))
            unit = "weights" if opts.budget_metric == "params" else "MACs"
            dense = allocate.total_cost([s.dense for s in spectra], opts.budget_metric)
            limit = budget * dense
            used = allocate.total_cost(chosen, opts.budget_metric)
            main.notes.append(f"rank budget {budget:g} ({opts.allocator}): {used:,} of {limit:,.0f} allowed "
                              f"{unit} ({dense:,} dense) in {len(targets)} layer(s); max predicted "
                              f"{opts.error_metric} error {max((o.error for o in chosen), default=0):.3g}")
            if used > limit:
                main.notes.append("the rank budget cannot be met: every layer is already at its cheapest option")
        for ctx, target, plan in chosen_plans(owners, targets, chosen):
            if target.nodes:  # an exact plan: replace it and its record
                ctx.plans[_position(ctx.plans, target)] = plan
                ctx.records[_position(ctx.records, target.record)] = plan.record
            else:
                ctx.plans.append(plan)
                ctx.records.append(plan.record)

    @staticmethod
    def allocator(contexts: list[Context], owners: list[Context], targets: list[FoldPlan],
                  spectra: list[allocate.LayerSpectrum]):
        """(budget -> the options chosen for ``targets`` under it, by the allocator the options name; a
        sentence describing a choice, or None). The output-aware allocator measures the layers' effects
        once, here."""
        opts = contexts[0].options
        if opts.allocator != "output":
            return lambda budget: allocate.ALLOCATORS[opts.allocator](spectra, budget, opts.budget_metric), None
        changes, rows = output_changes(contexts, owners, targets, spectra)

        def describe(chosen: list[allocate.Option]) -> str:
            predicted = sum(c[s.options.index(o)] for c, s, o in zip(changes, spectra, chosen))
            return (f"output-aware allocation: predicted relative output change {predicted:.3g} (each layer "
                    f"truncated alone on {rows} calibration rows at a ladder of ranks)")

        return lambda budget: allocate.allocate_min_total(spectra, changes, budget, opts.budget_metric), describe


def chosen_plans(owners: list[Context], targets: list[FoldPlan], chosen: list[allocate.Option],
                 cache: dict | None = None) -> list[tuple[Context, FoldPlan, FoldPlan]]:
    """(context, target, truncated plan) for each target whose chosen option is a smaller factor form;
    ``cache`` keeps plans made before, by (target, rank, groups)."""
    out = []
    for k, (ctx, target, option) in enumerate(zip(owners, targets, chosen)):
        if option.rank is None or option.params >= _current_params(target):
            continue
        key = (k, option.rank, option.groups)
        plan = cache.get(key) if cache is not None and key in cache else truncated_plan(ctx, target, option,
                                                                                          option.error)
        if cache is not None:
            cache[key] = plan
        if plan is not None:
            out.append((ctx, target, plan))
    return out


SEARCH_STEPS = 6  # budgets tried by ``search_budget``: 1/2, then bisection to 1/64


def search_budget(contexts: list[Context], owners: list[Context], targets: list[FoldPlan],
                  spectra: list[allocate.LayerSpectrum], allocate_at) -> tuple[float, list[allocate.Option]]:
    """The smallest budget whose model passes the verification the options ask for (metric and tolerance,
    on the verification rows: ``inputs``, rows held out of the calibration data, or random inputs), found
    by bisection; each budget tried is applied to the whole model with the exact folds and run. The
    frontier goes to the notes. Without a passing budget, every layer stays dense."""
    main, opts = contexts[0], contexts[0].options
    model, base_dir = main.model, main.view.store.base_dir
    feeds, where = make_feeds(model, opts.inputs, opts.input_shapes, opts.seed, opts.check_n,
                              opts.max_verify_memory)
    expected = run(ModelSource(model, base_dir), feeds, "original model")
    exact = [p for ctx in contexts for p in ctx.plans]
    cache: dict = {}
    lo, hi, best = 0.0, 1.0, None
    frontier = []
    with stage("searching the smallest budget that passes verification", total=SEARCH_STEPS):
        for _ in range(SEARCH_STEPS):
            budget = (lo + hi) / 2
            chosen = allocate_at(budget)
            truncated = chosen_plans(owners, targets, chosen, cache)
            replaced = {id(t) for _, t, _ in truncated}
            plans = [p for p in exact if id(p) not in replaced] + [plan for _, _, plan in truncated]
            actual = run(ModelSource(apply_plans(model, plans), base_dir), feeds, f"model at budget {budget:g}")
            verdict = compare_outputs(expected, actual, opts.atol, opts.rtol, where, opts.metric, opts.min_agreement)
            frontier.append(f"{budget:.3g}: " + _verdict_text(verdict))
            if verdict.passed:
                hi, best = budget, (budget, chosen)
            else:
                lo = budget
            advance()
    main.notes.append(f"budget search on {where}: " + "; ".join(frontier))
    if best is None:
        main.notes.append("no budget tried passed verification: every layer stays dense (the exact folds stay)")
        return 1.0, [s.dense for s in spectra]
    return best


def _verdict_text(verdict) -> str:
    worst = min(verdict.outputs, key=lambda s: (s.passed, -(s.agreement or 0.0)), default=None)
    if worst is None:
        return "passed" if verdict.passed else "failed"
    shown = f"top-1 {100 * worst.agreement:.1f}%" if worst.agreement is not None else f"max abs {worst.max_abs:.2g}"
    return f"{shown} {'passed' if verdict.passed else 'failed'}"


def output_changes(contexts: list[Context], owners: list[Context], targets: list[FoldPlan],
                   spectra: list[allocate.LayerSpectrum]) -> tuple[list[list[float]], int]:
    """Per target, the predicted relative output change of each of its options, and the calibration rows
    they were measured on: each main-graph target is
    truncated alone at a ladder of ranks and the model run on calibration rows (``sensitivity``); a target
    in a subgraph (whose effect cannot be run alone here) is taken to be as sensitive as the most
    sensitive measured one."""
    main = contexts[0]
    model, base_dir = main.model, main.view.store.base_dir
    arrays = calibrate.load_arrays(model, main.options.calibrate, max_memory=main.options.max_verify_memory)
    feeds = sensitivity.calibration_feeds(arrays, batch=fixed_batch(model.graph) or sensitivity.BATCH)
    measured = [(ctx, t) for ctx, t in zip(owners, targets) if not ctx.path]
    elems = {t.input: onnx.helper.np_dtype_to_tensor_dtype(t.dtype) for _, t in measured}
    captured = capture(ModelSource(model, base_dir), list(elems), elems, feeds)
    outputs = [o.name for o in model.graph.output]
    expected = [{n: c[n] for n in outputs} for c in captured]
    ladders: list[sensitivity.Ladder | None] = []
    with stage("measuring how each layer's truncation changes the output", total=len(targets)):
        for ctx, target, spectrum in zip(owners, targets, spectra):
            if ctx.path:
                ladders.append(None)
                advance()
                continue
            cut = sensitivity.downstream(model, target.input, elems[target.input])
            part, where = cut if cut is not None else (model, None)
            part_feeds = [{**feed, target.input: c[target.input]} for feed, c in zip(feeds, captured)]
            errors, changes = [], []
            ladder = sensitivity.ladder_options(spectrum)
            factors = linalg.nested_truncations(target.exact, max((o.rank for o in ladder), default=1),
                                                target_whitening(ctx, target))
            for option in ladder:
                plan = truncated_plan(ctx, target, option, option.error, factors)
                if plan is None:
                    continue
                if where is not None:
                    plan = replace(plan, removed=tuple(where[i] for i in plan.removed))
                actual = run(ModelSource(apply_plans(part, [plan]), base_dir), part_feeds,
                             f"model with {' > '.join(target.record.layers)} truncated", optimized=True)
                errors.append(option.error)
                changes.append(sensitivity.output_change(expected, actual))
            ladders.append(sensitivity.Ladder(tuple(errors), tuple(changes)))
            advance()
    ratios = [c / (e * e) for ladder in ladders if ladder for e, c in zip(ladder.errors, ladder.changes) if e > 0]
    worst = sensitivity.Ladder((1.0,), (max(ratios, default=1.0),))
    rows = sum(calibrate.row_count(feed) for feed in feeds)
    return [[(ladder or worst).predict(o.error) for o in s.options] for ladder, s in zip(ladders, spectra)], rows


class Spectra:
    """Fills ``ctx.spectra`` with the truncation targets' spectra (for ``analyze --spectrum``)."""

    name = "spectra"

    @staticmethod
    def stage(options, contexts):
        return "each layer's spectrum", count_targets(contexts), "layer"

    @staticmethod
    def reads_exact(options) -> bool:
        return True

    def run(self, ctx: Context) -> None:
        ctx.spectra = target_spectra(ctx)[1]
