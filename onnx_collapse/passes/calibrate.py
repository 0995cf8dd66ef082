"""Passes: streaming statistics of the calibration data, and chains refitted to their real outputs.

Both do nothing without ``options.calibrate``. Only the main graph is calibrated (a subgraph's tensors
cannot be captured from outside); its chains and low-rank targets stay data-free. A convolution's rows are
the windows it reads (its layout's ``rows``, ``layout.Windows``), so convolutional folds and truncations are calibrated
like fully connected ones.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from .. import calibrate, curvature, linalg
from ..candidates import Candidate
from ..curvature import SoftmaxRead, softmax_read
from ..graph import default_opset
from ..io import ModelSource
from ..kinds import Layer
from ..plans import FoldPlan, Segment
from .context import Context
from .fold import Form, cheapest_form, emit_plan, takes_form


def needs_fit(seg: Segment) -> bool:
    """A chain folds exactly when every activation's slope is exactly 1; otherwise it may be fitted."""
    return any(link.map.deviation > 0 for link in seg.activations())


def chain_request(seg: Segment, plan: FoldPlan) -> calibrate.Request | None:
    """What to measure for a chain's fold: its input, read as the fold reads it (its layout's rows), and its
    real output where the slopes are not exactly 1."""
    rows = plan.emit.layout.rows
    n_in, n_out = plan.exact.shape
    if needs_fit(seg):
        return calibrate.Request(seg.input, n_in, seg.output, n_out, rows)
    return calibrate.Request(seg.input, n_in, rows=rows)


def layer_request(ctx: Context, layer: Layer) -> calibrate.Request | None:
    """What to measure for truncating one layer outside the chains: its input, read as the layer reads it."""
    return calibrate.Request(layer.input, layer.n_in * layer.layout.group_unit, rows=layer.layout.rows)


def requests(ctx: Context) -> list[calibrate.Request]:
    """What to measure: each planned fold's input (with the chain's output where the slopes are not exactly
    1) and, when truncating every layer, each layer outside the chains."""
    wanted = [chain_request(c.segment, c.applied) for c in ctx.candidates if c.applied is not None]
    if ctx.options.truncates:
        wanted += [layer_request(ctx, layer) for layer in ctx.single_targets()]
    seen, unique = set(), []
    for r in sorted(filter(None, wanted), key=lambda r: r.y is None):  # one with cross terms covers its input
        if (r.x, r.rows) not in seen or r.y is not None:
            seen.add((r.x, r.rows))
            unique.append(r)
    return unique


def softmax_reads(ctx: Context) -> list[SoftmaxRead]:
    """The truncation targets' outputs that are logits a softmax reads over their features (``curvature``):
    their softmax's curvature weighs the targets' output errors. Empty unless something may be truncated."""
    if not ctx.options.truncates:
        return []
    outputs = [(c.segment.output, c.applied.emit.layout.axis) for c in ctx.candidates if c.applied is not None]
    outputs += [(layer.output, layer.layout.axis) for layer in ctx.single_targets()]
    opset = default_opset(ctx.model)
    found = (softmax_read(ctx.view, tensor, axis, opset) for tensor, axis in dict(outputs).items())
    return [read for read in found if read is not None]


def _elem_types(ctx: Context) -> dict[str, int]:
    types = {}
    for layer in ctx.layers:
        elem = onnx.helper.np_dtype_to_tensor_dtype(layer.dtype)
        types.setdefault(layer.input, elem)
        types.setdefault(layer.output, elem)
    for seg in ctx.segments:
        elem = onnx.helper.np_dtype_to_tensor_dtype(seg.layers[0].dtype)
        types[seg.input] = types[seg.output] = elem
    return types


class CollectStatistics:
    """One streaming onnxruntime pass over the calibration rows (main graph)."""

    name = "collect-statistics"

    @staticmethod
    def stage(options, contexts):
        return ("reading the calibration data in onnxruntime", None, None) if options.calibrate is not None else None

    def run(self, ctx: Context) -> None:
        data = ctx.options.calibrate
        if data is None:
            return
        if ctx.path:
            if ctx.layers:
                ctx.notes.append(f"graph {'/'.join(map(str, ctx.path))}: not calibrated (a subgraph's tensors "
                                 "cannot be captured); its folds and truncations are data-free")
            return
        wanted = requests(ctx)
        if not wanted:
            return
        arrays = calibrate.load_arrays(ctx.model, data, max_memory=ctx.options.max_verify_memory)
        source = ModelSource(ctx.model, ctx.view.store.base_dir)
        reads = softmax_reads(ctx)
        stats = calibrate.collect(source, wanted, _elem_types(ctx), arrays, calibrate.FOLDS, ctx.options.seed,
                                  reads)
        ctx.calibration = stats
        ctx.notes.append(f"calibration: {stats.rows} row(s) of {calibrate.describe(data)} in {stats.batches} "
                         f"batch(es), statistics of {len(stats.parts)} tensor(s)")
        for request, why in stats.skipped.items():
            ctx.notes.append(f"calibration: no statistics for {request.x!r}: {why}")
        for read in reads:
            curv = stats.curvatures.get(read.tensor)
            scale = None if curv is None else curv.output_scale()
            ctx.notes.append(f"calibration: {read.tensor!r} are logits a softmax reads; " + (
                "all classes weigh alike in their truncation (the softmax does not normalise over the features "
                "alone, or every class is certain)" if scale is None else
                "their truncation weighs each class by the softmax's curvature on the calibration rows "
                f"({curvature.describe(scale)})"))


def calibrated_form(fit: calibrate.Fit, plain: Form, whiten: linalg.Whitening | None, positions: int = 1
                    ) -> tuple[Form, linalg.Factored]:
    """The fitted map as a dense layer (run at ``positions`` output positions per row); when that is not
    smaller than a plain factor pair of rank r, the fit's rank-r truncation in its inputs' output metric."""
    form, exact = cheapest_form([linalg.Affine(fit.weight, fit.bias)])
    form = replace(form, macs=form.macs * positions)
    if plain.rank is None or form.params <= plain.params:
        return form, exact
    a, b, bias = linalg.truncate(exact, plain.rank, whiten)
    return Form("factor", (a, b), plain.rank, plain.params, plain.macs), linalg.Factored((a, b), bias)


class CalibrateFolds:
    """Replaces the plain fold of each chain with slopes near 1 by its least-squares fit to the chain's real
    outputs (ridge toward the plain fold); the plain fold stays as its fallback."""

    name = "calibrate-folds"

    @staticmethod
    def stage(options, contexts):
        return ("fitting the chains to the calibration data", None, None) if options.calibrate is not None else None

    @staticmethod
    def reads_exact(options) -> bool:
        return options.calibrate is not None

    def run(self, ctx: Context) -> None:
        stats = ctx.calibration
        if stats is None:
            return
        for candidate in ctx.candidates:
            plan, seg = candidate.applied, candidate.segment
            if plan is None or not needs_fit(seg):
                continue
            request = chain_request(seg, plan)
            parts = None if request is None else stats.parts.get(request)
            if parts is None:
                plan.outcome.reason = "not calibrated (no statistics); plain fold"
                continue
            self.refit(ctx, candidate, parts)

    def refit(self, ctx: Context, candidate: Candidate, parts: list[calibrate.Moments]) -> None:
        """Push the chain's calibrated fit as the candidate's form, or say in the plain fold why not."""
        plan, seg, plain = candidate.applied, candidate.segment, candidate.applied.outcome
        prior = np.asarray(plan.exact.dense(), dtype=np.float64)
        fit = calibrate.fit_chain(parts, prior, plan.exact.bias)
        rms = [float(fit.plain_rms), float(fit.fitted_rms)]
        if fit.weight is None:
            plain.calibration_rms = rms
            plain.reason = (f"calibrated fit no better on held-out calibration rows (RMS {rms[1]:.2e} vs "
                            f"{rms[0]:.2e}); plain fold")
            return
        outcome = plain.derived(reason="", calibrated=True, calibration_rms=rms, error=None)
        whiten = calibrate.input_whitening(ctx.calibration, seg.input, plan.exact.bias is not None,
                                           plan.emit.layout.rows)
        plain_form = Form(plain.form or "dense", (), plain.rank, plain.params_after, plain.macs_after)
        form, exact = calibrated_form(fit, plain_form, whiten, seg.layers[-1].layout.positions)
        if not takes_form(outcome, form, candidate.chain):
            plain.reason = f"calibrated fit not stored: {outcome.reason}; plain fold"
            return
        calibrated = emit_plan(ctx, seg, outcome, form, exact, plan.emission_for)
        if calibrated is None:
            return
        rows = plan.emit.layout.rows.noun
        outcome.reason = (f"least squares on {fit.rows} calibration {rows} (ridge {fit.alpha:g} toward the plain "
                          f"fold): RMS {rms[0]:.2e} -> {rms[1]:.2e} (cross-validated)")
        candidate.push(calibrated)
