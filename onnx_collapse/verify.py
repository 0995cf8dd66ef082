"""The public ``verify()``: two models run in onnxruntime on the same inputs, every output compared."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import onnx

from .accuracy import check_labels_file
from .compare import judge, verdict_text
from .errors import CollapseError, Param
from .inputs import graph_inputs, make_feeds
from .io import ModelSource, open_model
from .options import DEFAULTS, Options
from .progress import reported, stage
from .report import Verification
from .runner import StoredOutputs, fingerprint, iter_outputs, model_key, outputs_scratch, shared, stored


def open_reference(options: Options, model: onnx.ModelProto) -> ModelSource | None:
    """The model of ``options.reference`` (None without one), checked to take the inputs and give the
    outputs that ``model`` does; CollapseError naming the option otherwise."""
    if options.reference is None:
        return None
    try:
        ref = open_model(options.reference)
    except CollapseError as exc:
        raise exc.prefixed(Param("reference"), ": ") from None
    for what, mine, theirs in (("inputs", [i.name for i in graph_inputs(model)], [i.name for i in graph_inputs(ref.model)]),
                               ("outputs", [o.name for o in model.graph.output], [o.name for o in ref.model.graph.output])):
        if sorted(mine) != sorted(theirs):
            raise CollapseError(Param("reference"), f" has {what} {', '.join(map(repr, theirs)) or 'none'}, but the "
                                f"model has {', '.join(map(repr, mine)) or 'none'}: it must be the same network before "
                                "an earlier step")
    return ref


class ReferenceFailed(CollapseError):
    """The input model itself fails verification against ``--reference`` (``verdict`` says by how much)."""

    def __init__(self, verdict: Verification, *parts) -> None:
        super().__init__(*parts)
        self.verdict = verdict


def check_reference(source: ModelSource, options: Options) -> None:
    """With ``options.reference`` (and verification on): the input model itself judged against it on the
    verification rows, before any work, set by set; CollapseError naming the option when it fails, as no
    output could then pass. The reference's outputs on those rows are stored on disk (shared with the run's
    later checks within ``runner.run_scratch``)."""
    if options.reference is None or not options.verify:
        return
    model = source.model
    with stage("checking the input against the reference"):
        feeds, where = make_feeds(model, options.inputs, options.input_shapes, options.seed, options.check_n,
                                  options.max_verify_memory)
        with contextlib.ExitStack() as stack:  # the reference's outputs on disk, then one session at a time
            expected = reference_outputs(options, model, feeds)
            if not isinstance(expected, StoredOutputs):  # outside a run's scratch: kept for this check only
                expected = stored(expected, Path(stack.enter_context(outputs_scratch())))
            verdict = judge(expected, iter_outputs(source, feeds, "input model"), where, options)
    if not verdict.passed:
        raise ReferenceFailed(verdict, "the input model itself fails verification against ", Param("reference"),
                              " (", verdict_text(verdict), f" on {where}), so no output could pass; a looser "
                              "criterion or the right reference model is needed")


def reference_outputs(options: Options, model: onnx.ModelProto, feeds: list[dict]
                      ) -> Iterator[dict] | StoredOutputs | None:
    """The outputs of ``options.reference`` on ``feeds``, one input set at a time (``iter_outputs``; None
    without a reference; see ``open_reference``). Within ``runner.run_scratch``: stored on disk, run
    only the first time these feeds are asked for (``runner.shared``)."""
    ref = open_reference(options, model)
    if ref is None:
        return None
    key = ("reference outputs", model_key(options.reference), fingerprint(feeds))
    kept = shared(key, lambda folder: stored(iter_outputs(ref, feeds, "reference model"), folder))
    return iter_outputs(ref, feeds, "reference model") if kept is None else kept


def reference_text(options: Options) -> str:
    """How a verification against ``options.reference`` is described ('' without one)."""
    ref = options.reference
    if ref is None:
        return ""
    return f", compared with the reference {Path(ref).name!r}" if isinstance(ref, (str, os.PathLike)) else \
        ", compared with the reference model"


@reported
def verify(
    reference: onnx.ModelProto | str | os.PathLike, candidate: onnx.ModelProto | str | os.PathLike, *,
    inputs: str | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = DEFAULTS.seed, check_n: int = DEFAULTS.check_n, atol: float | None = None,
    rtol: float | None = None, metric: str = DEFAULTS.metric, min_agreement: float = DEFAULTS.min_agreement,
    max_memory: int | None = DEFAULTS.max_verify_memory, ctc_strip: tuple[int, ...] = (),
    confidence: float | None = None, labels: str | os.PathLike | Mapping | None = None,
    max_drop: float | None = None,
) -> Verification:
    """Run both models (paths or ModelProtos) in onnxruntime on the same inputs and compare every output
    of ``reference`` (``max_memory``: see ``make_feeds``; ``labels``, ``max_drop``: see ``Options``). Bad
    values raise CollapseError naming the keyword (checked as in ``Options``)."""
    criterion = Options(seed=seed, check_n=check_n, inputs=inputs, atol=atol, rtol=rtol, metric=metric,
                        min_agreement=min_agreement, max_verify_memory=max_memory, ctc_strip=ctc_strip,
                        confidence=confidence, labels=labels, max_drop=max_drop,
                        input_shapes={} if input_shapes is None else input_shapes)
    input_shapes = criterion.input_shapes
    with stage("loading the models"):
        ref, cand = open_model(reference), open_model(candidate)
    check_labels_file(ref.model, labels, inputs)
    names = tuple(repr(Path(m).name) if isinstance(m, (str, os.PathLike)) else what
                  for m, what in ((reference, "the reference model"), (candidate, "the candidate model")))
    feeds, source = make_feeds(ref.model, inputs, input_shapes or {}, seed, check_n, max_memory)
    with outputs_scratch() as tmp:
        with stage("running the original model"):  # its outputs on disk, then one session at a time
            expected = stored(iter_outputs(ref, feeds, names[0]), Path(tmp))
        with stage("running the optimized model"):  # compared set by set: neither's outputs all in memory
            return judge(expected, iter_outputs(cand, feeds, names[1]), source, criterion, names)
