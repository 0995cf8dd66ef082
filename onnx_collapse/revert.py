"""Verification with per-fold revert: each fold's own error measured in onnxruntime, then whole-model
trials of plan sets, the failing folds reverted as a group found by bisection (``acceptance.accept``,
which holds the pure logic)."""

from __future__ import annotations

import contextlib
import ctypes
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from .acceptance import accept, without_local_failures
from .candidates import applied
from .compare import compare, judge
from .errors import CollapseError, one_line
from .graph import GraphView
from .inputs import make_feeds, random_feeds
from .io import ModelSource, StagedOutput, data_backed, scratch_dir, write_errors
from .options import Options
from .passes.context import Context
from .plans import FoldPlan
from .report import ErrorStats, Verification
from .rewrite import STUB_BYTES, PlanApplier
from .runner import (
    BatchCache,
    StoredOutputs,
    capture_batches,
    chain_model,
    iter_outputs,
    run,
    session,
    stored,
)
from .verify import reference_outputs


def local_error(
    opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int,
    fold: tuple[str, str, Sequence[onnx.NodeProto], Sequence[onnx.TensorProto], int],
    cache: BatchCache, sets: int, atol: float | None, rtol: float | None, workdir: Path,
) -> ErrorStats:
    """A fold's own error, measured in onnxruntime at the folded chain's output.

    ``fold`` is (input, output, new nodes, new initializers, elem type); ``cache`` holds the original model's
    values of its input and output for each of the ``sets`` input sets (``capture_batches``). The new nodes
    run alone on the captured input, one set at a time, and their output is compared with the captured one
    as it comes (a set or two of values in memory, never all: a fold near a model's input writes large
    activations).
    Initializers that refer to files refer to data in ``workdir`` (large new tensors are parked there, see
    ``park``).
    """
    x, y, nodes, inits, elem_type = fold
    model = chain_model(x, y, nodes, inits, elem_type, opset_imports, ir_version)
    path = workdir / "fold.onnx"  # beside the parked data its large tensors refer to: loaded, not copied
    with write_errors(path):
        onnx.save_model(model, str(path))
    sess = session(ModelSource(model, workdir, path), "folded chain")

    def folded() -> Iterator[np.ndarray]:
        for b in range(sets):
            try:
                value = sess.run([y], {x: cache.get(x, b)})[0]
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
                raise CollapseError(f"onnxruntime cannot run the folded chain: {one_line(exc)}") from None
            yield value
            del value

    return compare(y, (cache.get(y, b) for b in range(sets)), folded(), atol, rtol)


def _elem(plan: FoldPlan) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(plan.dtype)


def _measure_folds(source: ModelSource, views: dict, plans: list[FoldPlan], feeds, options: Options,
                   parked: Path):
    """Every plan's own error in onnxruntime, and the original model's outputs (captured in the same run,
    kept on disk in ``parked``).

    Main-graph folds run on the inputs their chain really saw, captured on disk in ``parked`` (one input
    set's tensors in memory while the original model runs, then one fold's); folds inside subgraphs (whose
    tensors a model output cannot expose) run on seeded random inputs against the original chain.
    """
    main = [p for p in plans if not p.graph]
    model = source.model
    elems = {n: _elem(p) for p in main for n in (p.input, p.output)}
    outputs = [o.name for o in model.graph.output]
    cache = BatchCache(parked / "captured")
    kept = outputs if options.reference is None else []  # with a reference, its outputs are the ones compared
    expected = capture_batches(source, list(elems), elems, feeds, cache, optimized=False, keep=kept,
                               into=StoredOutputs(parked / "expected"))
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    for plan in main:
        plan.outcome.error = local_error(opsets, model.ir_version,
                                         (plan.input, plan.output, plan.nodes, plan.initializers, _elem(plan)),
                                         cache, len(feeds), options.atol, options.rtol, parked)
    for plan in (p for p in plans if p.graph):
        plan.outcome.error = _subgraph_fold_error(source, views[plan.graph], plan, opsets, options, parked)
    return expected


def _subgraph_fold_error(source: ModelSource, view: GraphView, plan: FoldPlan, opsets, options: Options,
                         parked: Path):
    """A subgraph fold's error: the original chain and the folded one on the same random inputs."""
    original, consts = view.standalone(plan.removed)
    elem, ir_version = _elem(plan), source.model.ir_version
    x_shape = plan.emit.layout.sample_shape(plan.rows)
    reference = chain_model(plan.input, plan.output, original, consts, elem,
                            opsets, ir_version, x_shape)
    ref_source = ModelSource(reference, source.base_dir)
    feeds = random_feeds(reference, {}, options.seed, options.check_n)
    expected = run(ref_source, feeds, "original chain")
    folded = chain_model(plan.input, plan.output, plan.nodes, plan.initializers, elem, opsets, ir_version)
    got = run(ModelSource(folded, parked), feeds, "folded chain")
    return compare(plan.output, [e[plan.output] for e in expected], [g[plan.output] for g in got],
                   options.atol, options.rtol)


class _Trials:
    """Whole-model runs of candidate plan sets against the original outputs.

    Remembers the last set that passed (with its model and verification) and which set was last
    written to ``staged``, so the accepted set is not rerun. A candidate written to ``staged`` is kept
    as the written model without its data (which stays in the staged file), so the new weights are not
    in memory while onnxruntime holds them too.
    """

    def __init__(self, source: ModelSource, feeds, expected, where: str, options: Options,
                 staged: StagedOutput | None, parked: Path):
        self.source, self.feeds, self.expected = source, feeds, expected
        self.where, self.options, self.staged = where, options, staged
        self.passed: tuple[list[int], onnx.ModelProto, Verification] | None = None
        self.written: list[int] | None = None
        self.applier = PlanApplier(source.model, parked)

    def run(self, plans: list[FoldPlan]) -> tuple[onnx.ModelProto, Verification]:
        """Apply ``plans`` to the original model, run it and compare its outputs."""
        if self.staged is not None:
            candidate = self._write(self.applier.apply(plans), plans)
            runnable = ModelSource(candidate, None, self.staged.staged)
        else:
            candidate = self.applier.apply(plans)
            runnable = ModelSource(candidate, self.source.base_dir)
        actual = iter_outputs(runnable, self.feeds, "optimized model")  # compared set by set, never all kept
        verification = judge(self.expected, actual, self.where, self.options)
        if verification.passed:
            self.passed = ([id(p) for p in plans], candidate, verification)
        return candidate, verification

    def passes(self, plans: list[FoldPlan]) -> bool:
        return self.run(plans)[1].passed

    def result(self, plans: list[FoldPlan]) -> tuple[onnx.ModelProto, Verification]:
        """The model and verification of ``plans``: remembered if it was the last set to pass, else run."""
        key = [id(p) for p in plans]
        if self.passed is None or self.passed[0] != key:
            return self.run(plans)
        if self.staged is not None and self.written != key:
            return self._write(self.applier.apply(plans), plans), self.passed[2]
        return self.passed[1], self.passed[2]

    def _write(self, candidate: onnx.ModelProto, plans: list[FoldPlan]) -> onnx.ModelProto:
        """Stage ``candidate``; returns the staged model as written, its data left in the staged file."""
        path = self.staged.write(candidate, consume=True)
        self.written = [id(p) for p in plans]
        del candidate
        return_free_memory()
        return onnx.load(str(path), load_external_data=False)


def verify_and_revert(source: ModelSource, contexts: list[Context], options: Options,
                       staged: StagedOutput | None) -> tuple[onnx.ModelProto, Verification]:
    """Keep the plans whose own error passes and with which the whole model passes.

    A plan whose own error fails is reverted first, in any graph (a truncated plan to its exact fold
    if that passes); with metric top1 only in subgraphs, as the metric judges main-graph folds.
    If the model then fails, the worst plans are reverted as a group found by
    bisection (see acceptance.accept). With ``staged``, candidates are written there and onnxruntime
    reads them from disk.
    """
    model = source.model
    plans = [p for ctx in contexts for p in applied(ctx.candidates)]
    feeds, where = make_feeds(model, options.inputs, options.input_shapes, options.seed, options.check_n,
                              options.max_verify_memory)
    every = [q for p in plans for q in (p, p.fallback) if q is not None]
    views = {ctx.path: ctx.view for ctx in contexts}
    with contextlib.ExitStack() as stack:
        if staged is not None:
            folder = staged.scratch
        else:
            with write_errors(Path(tempfile.gettempdir())):
                folder = Path(stack.enter_context(scratch_dir(Path(tempfile.gettempdir()), "onnx-collapse-parked-")))
        parked = park(every, folder)
        expected = _measure_folds(source, views, every, feeds, options, parked)
        reference = reference_outputs(options, model, feeds)
        if reference is not None:
            expected = stored(reference, parked / "reference")
        trials = _Trials(source, feeds, expected, where, options, staged, parked)
        accepted, reverts = without_local_failures(plans, exempt_main_graph=options.metric != "allclose")
        if accepted and not trials.passes(accepted):
            accepted, more = accept(accepted, trials.passes)
            reverts += more
        for revert in reverts:
            revert.plan.candidate.undo(revert.plan, revert.replacement, revert.reason)
        out, verification = trials.result(accepted)
        if staged is not None and not verification.passed:  # nothing is committed: the staged data goes away
            out = trials.applier.apply(accepted)
        return out, verification


def park(plans: list[FoldPlan], folder: Path) -> Path:
    """Move the data of the plans' large new tensors into a file in ``folder`` (created), the plans keeping
    tensors that refer to it, so the new weights are not in memory while onnxruntime holds the original
    ones; applying the plans reads them back (``rewrite.fill_data``). Returns ``folder``."""
    try:
        folder.mkdir(exist_ok=True)
        for plan in plans:
            plan.initializers = data_backed(plan.initializers, folder / "parked.data", STUB_BYTES)
    except OSError as exc:  # a full disk: one line, and the staging folder goes with the run
        raise CollapseError(f"cannot write scratch data in {str(folder)!r}: {exc.strerror or exc}") from None
    return_free_memory()
    return folder


def return_free_memory() -> None:
    """Hand memory freed in this process back to the system (glibc keeps freed blocks of a few MB in its
    heap, where they still count as the process's memory); nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (musl has no malloc_trim)
        pass
