"""Pass: store layers as truncated (optionally grouped) factor pairs, ranks chosen globally (ALDS).

Runs only when the user sets ``rank_budget`` or ``max_error``. Targets are the collapsed products
(default) or, with ``low_rank="all"``, every linear layer. Truncation changes the function: each new
plan records its predicted error, keeps the exact plan as a fallback, and verification decides.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from .. import allocate, calibrate, linalg, sensitivity, sequential, timing
from ..candidates import Candidate, Outcome
from ..compare import judge, verdict_text
from ..emit import RangeError, cast_checked
from ..errors import one_line
from ..graph import fixed_batch, sized
from ..inputs import make_feeds
from ..io import ModelSource, scratch_dir
from ..kinds import Layer
from ..plans import FoldPlan, Segment
from ..progress import advance, stage
from ..report import Verification
from ..rewrite import PlanApplier, apply_plans
from ..runner import (
    BatchCache,
    capture_batches,
    chain_model,
    iter_outputs,
    outputs_scratch,
    probed_session,
    run,
    stored,
)
from ..verify import reference_outputs, reference_text
from .chains import candidate_for
from .context import Context
from .fold import written_around


def _targets(ctx: Context) -> list[Candidate]:
    """Candidates with a fold in force, plus (with low_rank="all") a new candidate for each single linear
    layer outside the chains (it joins ``ctx.candidates`` when a truncation is written for it)."""
    return [c for c in ctx.candidates if c.applied is not None] + [layer_target(ctx, layer)
                                                                   for layer in ctx.single_targets()]


def count_targets(contexts: list[Context]) -> int:
    """How many targets ``_targets`` gives over ``contexts`` (the progress display's total), building none."""
    return sum(sum(c.applied is not None for c in ctx.candidates) + len(ctx.single_targets()) for ctx in contexts)


def layer_target(ctx: Context, layer: Layer) -> Candidate:
    """A candidate truncating one layer: its own map, stored dense until a truncation is written for it."""
    candidate = candidate_for(ctx, Segment([layer], [], input=layer.input, output=layer.output))
    candidate.status = "target"
    chain = candidate.chain
    candidate.outcome = Outcome(form="dense", params_after=chain.params_before, macs_after=chain.macs_before)
    candidate.emit = layer.kind.emission(layer, ctx.view.label(layer.nodes[0]) + "/lowrank", ctx.opset,
                                         layer.bias_rank, layer.bias is not None, 2)
    affine = layer.affine(ctx.view)
    if affine.scale != 1.0:  # otherwise the stored weight (possibly a file view) is read in slices when needed
        affine = linalg.compose([affine])
    candidate.exact = linalg.Factored((affine.weight,), affine.bias)
    return candidate


def target_whitening(ctx: Context, target: Candidate, weighed: bool = True) -> linalg.Whitening | None:
    """The target's output-error metric on the calibration data (None: data-free), computed once per target:
    its inputs' whitening, its outputs weighed by the curvature of the softmax reading them where one does
    (``weighed``). The factors written are fitted in the weighed metric, the ranks allocated in the unweighed
    one: on the rows the weights came from, a weighed truncation looks cheaper than it is on others (PP-OCRv4
    rec, MAC budget 0.7: the head cut to rank 39 instead of 66, 74 % of held-out lines exact, not 93 %)."""
    curv = None if ctx.calibration is None or not weighed else ctx.calibration.curvatures.get(target.segment.output)
    key = (target.segment.input, target.target_map().bias is not None, target.target_emit().layout.rows,
           None if curv is None else target.segment.output)
    if key not in ctx.whitenings:
        found = calibrate.input_whitening(ctx.calibration, *key[:3])
        ctx.whitenings[key] = found if found is None or curv is None else found.weighing_outputs(curv.output_scale())
    return ctx.whitenings[key]


def target_spectra(ctx: Context) -> tuple[list[Candidate], list[allocate.LayerSpectrum]]:
    """The truncation targets and their storage options (grouping only for inputs of known rank >= 2);
    spectra of the whitened weights where the target's inputs were calibrated (activation-aware ALDS)."""
    targets, spectra = [], []
    for t in _targets(ctx):
        name = " > ".join(t.chain.layers)
        emit = t.target_emit()
        try:
            found = allocate.spectrum(name, t.target_map(), ctx.options.error_metric,
                                      ctx.options.max_groups if (emit.layout.input_rank or 0) >= 2 else 1,
                                      emit.layout.group_unit, target_whitening(ctx, t, weighed=False))
        except (linalg.NonFiniteError, np.linalg.LinAlgError) as exc:  # LAPACK refuses NaN and inf
            ctx.notes.append(f"{name}: no low-rank form: its weights have no spectrum ({exc})")
            continue
        targets.append(t)
        spectra.append(at_positions(found, emit.layout.positions))
    return targets, spectra


def at_positions(spectrum: allocate.LayerSpectrum, positions: int) -> allocate.LayerSpectrum:
    """``spectrum`` with each option's MACs counted per row of the model: a convolution runs its matrices
    once per output position."""
    if positions == 1:
        return spectrum
    return replace(spectrum, options=tuple(replace(o, macs=o.macs * positions) for o in spectrum.options))


def _current_params(target: Candidate) -> int:
    """Weights of the target's current form, its bias not counted (as the options count them)."""
    bias = target.target_map().bias
    return target.shown.params_after - (0 if bias is None else bias.size)


def truncated_plan(ctx: Context, target: Candidate, option: allocate.Option, error: float,
                   factors=None) -> FoldPlan | None:
    """A form of ``target`` storing its map with ``option``'s (grouped) rank, not yet pushed; None if it does
    not fit the dtype. ``factors``: ``linalg.nested_truncations`` of the target, to slice instead of factorizing
    again."""
    whiten = target_whitening(ctx, target)
    exact, emit, seg = target.target_map(), target.target_emit(), target.segment
    dtype = seg.layers[0].dtype
    try:
        if option.groups == 1:
            a, b, bias = (factors or (lambda r: linalg.truncate(exact, r, whiten)))(option.rank)
            a = cast_checked(a, dtype)  # each float64 factor gives way to its stored form (memory)
            b = cast_checked(b, dtype)
            write = lambda x, y: emit.linear(ctx.fresh_name, x, y, (a, b), bias, dtype)  # noqa: E731
        else:
            first, second, bias = linalg.truncate_grouped(exact.dense(), option.groups, option.rank,
                                                          exact.bias, whiten)
            write = lambda x, y: emit.grouped(ctx.fresh_name, x, y, first, second, bias, dtype)  # noqa: E731
        nodes, inits = written_around(ctx, seg, emit.prefix, write)  # the shape ops at the chain's edges too
    except RangeError as exc:
        ctx.notes.append(f"{' > '.join(target.chain.layers)}: low-rank form skipped: {exc}")
        return None
    return _pair_plan(ctx, target, nodes, inits, option, bias, error, whiten is not None)


def _pair_plan(ctx: Context, target: Candidate, nodes, inits, option, bias, error: float, calibrated: bool,
               reason: str = "") -> FoldPlan:
    """The form of ``target`` made of ``nodes`` storing ``option``'s factors (not yet pushed)."""
    seg = target.segment
    bias_params = 0 if bias is None else bias.size
    outcome = target.shown.derived(reason="", form="grouped" if option.groups > 1 else "truncated",
                                   rank=option.rank, params_after=option.params + bias_params,
                                   macs_after=option.macs, predicted_error=error, error=None)
    if option.groups > 1:
        outcome.reason = f"{option.groups} groups"
    if calibrated:
        outcome.reason = ", ".join(filter(None, [outcome.reason, "activation-aware (calibrated)", reason]))
    return FoldPlan(outcome, target.graph, seg.node_positions(), seg.input, seg.output, nodes, inits,
                    seg.layers[0].dtype, target.target_map(), target.target_emit(), candidate=target)


def _amount(value: float, metric: str) -> str:
    """A budget amount: weights and MACs as whole numbers with thousands separators, seconds to 3 digits."""
    return f"{value:.3g}" if metric == "time" else f"{value:,.0f}"


def timed_spectra(owners: list[Context], targets: list[Candidate], spectra: list[allocate.LayerSpectrum]
                  ) -> list[allocate.LayerSpectrum]:
    """``spectra`` with each option's onnxruntime seconds per sample (``timing``): every main-graph target
    timed alone at its real input shape, as stored and at a ladder of truncated ranks; a target whose shape
    is unknown, or in a subgraph, at the measured targets' mean seconds per MAC."""
    timed: list[allocate.LayerSpectrum | None] = []
    with stage("timing each layer's forms in onnxruntime", total=len(targets)):
        for ctx, target, spectrum in zip(owners, targets, spectra):
            timed.append(None if ctx.path else _timed(ctx, target, spectrum))
            advance()
    measured = [s for s in timed if s is not None]
    macs = sum(s.dense.macs for s in measured)
    rate = sum(s.dense.seconds for s in measured) / macs if macs else 1e-9
    untimed = [" > ".join(t.chain.layers) for t, s in zip(targets, timed) if s is None]
    if untimed:
        owners[0].notes.append(f"time budget: {len(untimed)} layer(s) not timed (in a subgraph, or of unknown "
                               f"input shape: {', '.join(untimed[:3])}{', ...' if len(untimed) > 3 else ''}); "
                               "their time is estimated from their MACs at the timed layers' seconds per MAC")
    return [t if t is not None else replace(s, options=tuple(replace(o, seconds=o.macs * rate) for o in s.options))
            for t, s in zip(timed, spectra)]


def _timed(ctx: Context, target: Candidate, spectrum: allocate.LayerSpectrum) -> allocate.LayerSpectrum | None:
    seg, view = target.segment, ctx.view
    found = sized(view.shapes.get(seg.input), view.measured.get(seg.input), view.static_batch, view.batch)
    if found is None:
        return None
    shape, samples = found
    if samples is None or view.static_batch is None:  # axis 0 is the batch: time BATCH samples
        shape, samples = (timing.BATCH, *shape[1:]), timing.BATCH
    dtype = seg.layers[0].dtype
    feed = {seg.input: timing.random_input(shape, dtype, ctx.options.seed)}
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    opsets = [o for o in ctx.model.opset_import if o.domain in ("", "ai.onnx")]

    def seconds(nodes, inits) -> float:
        model = chain_model(seg.input, seg.output, nodes, inits, elem, opsets, ctx.model.ir_version, list(shape))
        return timing.seconds_per_sample(model, feed, samples)

    try:
        if target.applied is not None:
            dense = seconds(target.applied.nodes, target.applied.initializers)
        else:
            dense = seconds(*view.standalone(seg.node_positions()))
        ladder = sensitivity.ladder_options(spectrum)
        factors = linalg.nested_truncations(target.target_map(), max((o.rank for o in ladder), default=1),
                                            target_whitening(ctx, target, weighed=False))
        measured = []
        for option in ladder:
            plan = truncated_plan(ctx, target, option, option.error, factors)
            if plan is not None:
                measured.append((option.macs, seconds(plan.nodes, plan.initializers)))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types; timing is never fatal
        ctx.notes.append(f"{' > '.join(target.chain.layers)}: not timed ({one_line(exc, 160)}); "
                         "its time is estimated from its MACs")
        return None
    times = timing.option_seconds(spectrum.options, dense, measured)
    return replace(spectrum, options=tuple(replace(o, seconds=t) for o, t in zip(spectrum.options, times)))


def refitted_plan(ctx: Context, target: Candidate, option: allocate.Option, found: sequential.Refit,
                  error: float) -> FoldPlan | None:
    """The form of ``target`` storing a sequential refit's factors; None if they do not fit the dtype."""
    emit, seg, dtype = target.target_emit(), target.segment, target.segment.layers[0].dtype
    try:
        a, b = cast_checked(found.a, dtype), cast_checked(found.b, dtype)
        nodes, inits = written_around(ctx, seg, emit.prefix,
                                      lambda x, y: emit.linear(ctx.fresh_name, x, y, (a, b), found.bias, dtype))
    except RangeError as exc:
        ctx.notes.append(f"{' > '.join(target.chain.layers)}: sequential refit skipped: {exc}")
        return None
    rows = emit.layout.rows.noun
    reason = (f"sequential fit on {found.rows} calibration {rows} (ridge {found.alpha:g} toward the layer): "
              f"held-out RMS{' of the softmax-weighed outputs' if found.weighed else ''} "
              f"{found.one_pass_rms:.2e} -> {found.refit_rms:.2e}")
    return _pair_plan(ctx, target, nodes, inits, option, found.bias, error, True, reason)


def refit_in_order(contexts: list[Context], picked: list[tuple[Context, Candidate, FoldPlan]],
                   options: list[allocate.Option], notes: list[str]) -> list[tuple[Context, Candidate, FoldPlan]]:
    """``picked`` with each main-graph truncation refitted in graph order to the original layer's outputs,
    given the inputs the model truncated so far gives it (``sequential``), where that predicts the
    original outputs better on held-out calibration rows; the one-pass truncation stays otherwise. What it
    did goes to ``notes``."""
    main = contexts[0]
    opts, model, base_dir = main.options, main.model, main.view.store.base_dir
    order = sorted((k for k, (ctx, _, _) in enumerate(picked) if not ctx.path),
                   key=lambda k: min(picked[k][1].segment.node_positions()))
    if not order:  # nothing truncated in the main graph: nothing to refit
        return picked
    arrays = calibrate.load_arrays(model, opts.calibrate, max_memory=opts.max_verify_memory)
    elems = {picked[k][1].segment.input: onnx.helper.np_dtype_to_tensor_dtype(picked[k][1].segment.layers[0].dtype)
             for k in order}
    source = ModelSource(model, base_dir)
    probed = probed_session(source, list(elems), elems)  # one session sizes the batches and captures them
    batch = fixed_batch(model.graph) or sequential.rows_per_batch(probed, arrays, sensitivity.BATCH)
    batches = sensitivity.calibration_feeds(arrays, calibrate.row_count(arrays), batch)
    if len(batches) < 2:
        notes.append("sequential fitting: too few calibration rows to cross-validate; one-pass truncations")
        return picked
    base = [c.applied for ctx in contexts for c in ctx.candidates if c.applied is not None]
    out, fitted, kept, large = list(picked), {}, 0, []
    applier = PlanApplier(model)  # one import for every step's compressed model
    with stage("refitting the truncations in graph order", total=len(order)), \
            scratch_dir(Path(tempfile.gettempdir()), "onnx-collapse-sequential-") as tmp:
        original = BatchCache(Path(tmp) / "o")
        compressed = BatchCache(Path(tmp) / "c")
        capture_batches(source, list(elems), elems, batches, original, probed=probed)
        for k in order:
            ctx, target, plan = picked[k]
            fitted[k] = plan
            n_in, n_out = target.target_map().shape
            if plan.outcome.form == "truncated" and sequential.statistics_bytes(n_in, n_out) > \
                    sequential.MAX_STATISTICS_BYTES:
                large.append(" > ".join(target.chain.layers))
            elif plan.outcome.form == "truncated":
                replaced = {id(picked[j][1]) for j in fitted}
                current = applier.apply([p for p in base if id(p.candidate) not in replaced] +
                                        [fitted[j] for j in fitted if j != k])
                exact, emit, x = target.target_map(), target.target_emit(), target.segment.input
                weight = exact.dense()
                values = sequential.compressed_inputs(current, base_dir, x, elems[x], batches, compressed, elems)
                pairs = ((b, sequential.row_pairs(v, original.get(x, b), weight.shape[0], emit.layout.rows))
                         for b, v in values)
                metric = target_whitening(ctx, target)
                weighed = None if metric is None else metric.output
                parts = sequential.statistics(pairs, weight, exact.bias, output=weighed)
                one_pass = linalg.truncate(exact, options[k].rank, metric)
                found = sequential.refit(parts, weight, exact.bias, options[k].rank, one_pass, weighed)
                better = None if found is None else refitted_plan(ctx, target, options[k], found,
                                                                   plan.outcome.predicted_error)
                if better is not None:
                    fitted[k] = better
                    out[k] = (ctx, target, better)
                    kept += 1
            advance()
    notes.append(f"sequential fitting: {kept} of {len(order)} truncation(s) refitted to the original layers' "
                 f"outputs on the truncated model's inputs ({calibrate.row_count(arrays)} calibration rows); "
                 "the others kept their one-pass fit (it predicted the outputs as well on held-out rows)")
    if large:
        notes.append(f"sequential fitting skipped for {len(large)} layer(s) whose statistics would need over "
                     f"{sequential.MAX_STATISTICS_BYTES // 2**20} MiB ({', '.join(large[:3])}"
                     f"{', ...' if len(large) > 3 else ''}): one-pass truncations")
    return out


class LowRank:
    """Replaces exact plans (and, on request, single layers) by truncated factor pairs under a global budget."""

    name = "low-rank"

    @staticmethod
    def stage(options, contexts):
        if not options.truncates:
            return None
        return "low-rank truncation: each layer's spectrum, then the factors", count_targets(contexts), "layer"

    @staticmethod
    def reads_exact(options) -> bool:
        return options.truncates

    def run_all(self, contexts: list[Context]) -> None:
        if not contexts:
            return
        opts = contexts[0].options
        if not opts.truncates:
            return
        owners, targets, spectra = [], [], []
        for ctx in contexts:
            found, found_spectra = target_spectra(ctx)
            owners += [ctx] * len(found)
            targets += found
            spectra += found_spectra
        main = contexts[0]
        if targets and opts.budget_metric == "time":
            spectra = timed_spectra(owners, targets, spectra)
        if not targets:
            main.notes.append("no low-rank target: no " + ("linear layer" if opts.low_rank == "all" else
                                                          "folded chain") + " to truncate")
            return
        picked = None
        if opts.rank_budget is None:
            chosen = allocate.allocate_max_error(spectra, opts.max_error, opts.budget_metric)
            if all(o.rank is None for o in chosen):
                main.notes.append(f"max error {opts.max_error:g}: no truncation of the {len(targets)} target "
                                  f"layer(s) is within it, or cheaper than the dense form; each stays dense")
        else:
            allocate_at, describe = self.allocator(contexts, owners, targets, spectra)
            if opts.rank_budget == "auto":
                budget, chosen, picked = search_budget(contexts, owners, targets, spectra, allocate_at)
            else:
                budget, chosen = opts.rank_budget, allocate_at(opts.rank_budget)
            main.budget = budget
            if describe is not None:
                main.notes.append(describe(chosen))
            m = opts.budget_metric
            unit = {"params": "weights", "macs": "MACs", "time": "seconds per sample"}[m]
            dense = allocate.total_cost([s.dense for s in spectra], opts.budget_metric)
            limit = budget * dense
            used = allocate.total_cost(chosen, opts.budget_metric)
            main.notes.append(f"rank budget {budget:g} ({opts.allocator}): {_amount(used, m)} of {_amount(limit, m)} "
                              f"allowed {unit} ({_amount(dense, m)} dense) in {len(targets)} layer(s); max predicted "
                              f"{opts.error_metric} error {max((o.error for o in chosen), default=0):.3g}")
            if used > limit:
                main.notes.append("the rank budget cannot be met: every layer is already at its cheapest option"
                                  + ("; the search went below what truncation can reach, and the model is as "
                                     "small as truncation makes it" if opts.rank_budget == "auto" else ""))
                if opts.rank_budget != "auto":
                    main.over_budget = f"{_amount(used, m)} of {_amount(limit, m)} allowed {unit}"
        if picked is None:
            picked = truncations(contexts, owners, targets, chosen, main.notes)
        index = {id(t): k for k, t in enumerate(targets)}
        options = [chosen[index[id(target)]] for _, target, _ in picked]
        for (ctx, target, plan), option in zip(picked, options):
            if option.seconds is not None:
                plan.outcome.seconds_before = spectra[index[id(target)]].dense.seconds
                plan.outcome.seconds_after = option.seconds
            if target.status == "target":  # a single layer: a candidate of the report from now on
                ctx.candidates.append(target)
            target.push(plan)

    @staticmethod
    def allocator(contexts: list[Context], owners: list[Context], targets: list[Candidate],
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


def chosen_plans(owners: list[Context], targets: list[Candidate], chosen: list[allocate.Option],
                 cache: dict | None = None) -> list[tuple[Context, Candidate, FoldPlan]]:
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


def truncations(contexts: list[Context], owners: list[Context], targets: list[Candidate],
                chosen: list[allocate.Option], notes: list[str], cache: dict | None = None
                ) -> list[tuple[Context, Candidate, FoldPlan]]:
    """``chosen_plans``, each refitted in graph order (``refit_in_order``) when the options ask for
    sequential fitting; what that did goes to ``notes``."""
    picked = chosen_plans(owners, targets, chosen, cache)
    if not contexts[0].options.sequential:
        return picked
    index = {id(t): k for k, t in enumerate(targets)}
    return refit_in_order(contexts, picked, [chosen[index[id(t)]] for _, t, _ in picked], notes)


SEARCH_STEPS = 6  # budgets tried by ``search_budget``: 1/2, then bisection to 1/64


def search_budget(contexts: list[Context], owners: list[Context], targets: list[Candidate],
                  spectra: list[allocate.LayerSpectrum], allocate_at
                  ) -> tuple[float, list[allocate.Option], list[tuple[Context, Candidate, FoldPlan]]]:
    """The smallest budget whose model passes the verification the options ask for (metric and tolerance,
    on the verification rows: ``inputs``, rows held out of the calibration data, or random inputs), found
    by bisection, with its options and truncated plans; each budget tried is applied to the whole model
    with the exact folds, its truncations refitted in graph order first where the options ask for
    sequential fitting (so the model judged is the model written), and run. The frontier goes to the
    notes. Without a passing budget, every layer stays dense."""
    main, opts = contexts[0], contexts[0].options
    model, base_dir = main.model, main.view.store.base_dir
    feeds, where = make_feeds(model, opts.inputs, opts.input_shapes, opts.seed, opts.check_n,
                              opts.max_verify_memory)
    where += reference_text(opts)
    candidates = [c for ctx in contexts for c in ctx.candidates]
    cache: dict = {}
    lo, hi, best, why = 0.0, 1.0, None, []
    frontier = []
    with stage("searching the smallest budget that passes verification", total=SEARCH_STEPS), \
            outputs_scratch() as tmp:
        # the original's outputs on disk, every budget's compared set by set: none of them all in memory
        reference = reference_outputs(opts, model, feeds)
        expected = stored(iter_outputs(ModelSource(model, base_dir), feeds, "original model") if reference is None
                          else reference, Path(tmp))
        judged: dict[tuple[allocate.Option, ...], tuple[float, Verification]] = {}  # an allocation's verdict
        for _ in range(SEARCH_STEPS):
            budget = (lo + hi) / 2
            chosen = allocate_at(budget)
            notes: list[str] = []
            truncated = truncations(contexts, owners, targets, chosen, notes, cache)
            allocation = tuple(chosen)
            same, verdict = judged.get(allocation, (budget, None))
            if verdict is None:  # a budget whose allocation was judged already is the same model: not run again
                replaced = {id(t) for _, t, _ in truncated}
                plans = [c.applied for c in candidates if c.applied is not None and id(c) not in replaced]
                plans += [plan for _, _, plan in truncated]
                actual = iter_outputs(ModelSource(apply_plans(model, plans), base_dir), feeds,
                                      f"model at budget {budget:g}")
                verdict = judge(expected, actual, where, opts)
                judged[allocation] = (budget, verdict)
            frontier.append(f"{budget:.3g}: " + verdict_text(verdict)
                            + (f" (the layers of budget {same:.3g}: the same model)" if same != budget else ""))
            why = verdict.problems
            if verdict.passed:
                hi, best = budget, (budget, chosen, truncated, notes)
            else:
                lo = budget
            advance()
    main.notes.append(f"budget search on {where}: " + "; ".join(frontier))
    if best is None:
        main.notes.append("no budget tried passed verification: every layer stays dense (the exact folds stay)"
                          + "".join(f"; {p}" for p in why))
        return 1.0, [s.dense for s in spectra], []
    budget, chosen, truncated, notes = best
    main.notes += notes
    return budget, chosen, truncated


def output_changes(contexts: list[Context], owners: list[Context], targets: list[Candidate],
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
    elems = {t.segment.input: onnx.helper.np_dtype_to_tensor_dtype(t.segment.layers[0].dtype) for _, t in measured}
    outputs = [o.name for o in model.graph.output]
    ladders: list[sensitivity.Ladder | None] = []
    with stage("measuring how each layer's truncation changes the output", total=len(targets)), \
            scratch_dir(Path(tempfile.gettempdir()), "onnx-collapse-sensitivity-") as tmp:
        cache = BatchCache(Path(tmp))  # each target's inputs on disk: one target's in memory at a time
        expected = capture_batches(ModelSource(model, base_dir), list(elems), elems, feeds, cache, keep=outputs)
        for ctx, target, spectrum in zip(owners, targets, spectra):
            if ctx.path:
                ladders.append(None)
                advance()
                continue
            x = target.segment.input
            cut = sensitivity.downstream(model, x, elems[x])
            part, where = cut if cut is not None else (model, None)
            part_feeds = [{**feed, x: cache.get(x, b)} for b, feed in enumerate(feeds)]
            errors, changes = [], []
            ladder = sensitivity.ladder_options(spectrum)
            factors = linalg.nested_truncations(target.target_map(), max((o.rank for o in ladder), default=1),
                                                target_whitening(ctx, target, weighed=False))
            for option in ladder:
                plan = truncated_plan(ctx, target, option, option.error, factors)
                if plan is None:
                    continue
                if where is not None:
                    plan = replace(plan, removed=tuple(where[i] for i in plan.removed))
                actual = run(ModelSource(apply_plans(part, [plan]), base_dir), part_feeds,
                             f"model with {' > '.join(target.chain.layers)} truncated", optimized=True)
                errors.append(option.error)
                changes.append(sensitivity.output_change(expected, actual))
            del part_feeds
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
