"""The public ``verify()``: two models run in onnxruntime on the same inputs, every output compared."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import onnx

from .compare import compare_outputs, output_mismatches
from .inputs import make_feeds
from .io import open_model
from .options import DEFAULTS, Options
from .progress import reported, stage
from .report import Verification
from .runner import run


@reported
def verify(
    reference: onnx.ModelProto | str | os.PathLike, candidate: onnx.ModelProto | str | os.PathLike, *,
    inputs: str | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = DEFAULTS.seed, check_n: int = DEFAULTS.check_n, atol: float | None = None,
    rtol: float | None = None, metric: str = DEFAULTS.metric, min_agreement: float = DEFAULTS.min_agreement,
    max_memory: int | None = DEFAULTS.max_verify_memory,
) -> Verification:
    """Run both models (paths or ModelProtos) in onnxruntime on the same inputs and compare every output
    of ``reference`` (``max_memory``: see ``make_feeds``). Bad values raise CollapseError naming the
    keyword (checked as in ``Options``)."""
    Options(seed=seed, check_n=check_n, atol=atol, rtol=rtol, metric=metric, min_agreement=min_agreement,
            max_verify_memory=max_memory)
    with stage("loading the models"):
        ref, cand = open_model(reference), open_model(candidate)
    names = tuple(repr(Path(m).name) if isinstance(m, (str, os.PathLike)) else what
                  for m, what in ((reference, "the reference model"), (candidate, "the candidate model")))
    feeds, source = make_feeds(ref.model, inputs, input_shapes or {}, seed, check_n, max_memory)
    with stage("running the original model"):
        expected = run(ref, feeds, names[0])
    with stage("running the optimized model"):
        actual = run(cand, feeds, names[1])
    result = compare_outputs(expected, actual, atol, rtol, source, metric, min_agreement)
    result.problems = output_mismatches(expected[0], actual[0], names)
    return result
