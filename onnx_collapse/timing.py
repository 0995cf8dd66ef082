"""Measured time: how long a layer's forms take in onnxruntime on this machine, at the shapes the model has.

``--budget-metric time`` spends the budget where the time goes. Each truncation target is run alone (its
nodes as a model of their own, fed random inputs of the layer's real input shape for a batch of ``BATCH``
samples): once as it is stored (dense, or its exact fold) and once per rank of a short ladder with its real
truncated factors, so what the factors cost is measured, overhead and all. An option's time between and
beyond the measured ranks is interpolated linearly in its MACs among the factor forms. Times are seconds
per sample, the median of a few timed runs after a warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .allocate import Option
from .io import uses_external

BATCH = 8  # samples per timed run (the batch deployments usually run; the measure)
RUNS = 7  # timed runs per form, after one warm-up
THREADS = 2


def seconds_per_sample(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], samples: int,
                       runs: int = RUNS, threads: int = THREADS) -> float:
    """Median seconds per sample of ``model`` (in memory, without external data) on ``feed`` holding
    ``samples`` samples: one warm-up run, then ``runs`` timed ones, onnxruntime's optimizations on."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    sess.run(names, dict(feed))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(names, dict(feed))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / max(samples, 1)


def model_seconds(source, probe, static_batch: int | None) -> float | None:
    """Seconds per sample of the whole model ``source`` (a ModelSource) on ``probe``'s input set, repeated to
    ``BATCH`` samples where the batch is not fixed; None when the model cannot be timed in memory here."""
    feed = {k: np.asarray(v) for k, v in probe.feed.items()}
    samples = static_batch or BATCH
    if static_batch is None:
        feed = {k: np.repeat(v[:1], BATCH, axis=0) if v.ndim else v for k, v in feed.items()}
    if source.path is None and (uses_external(source.model) or source.model.ByteSize() > 2**31 - 2**20):
        return None
    model = source.model if source.path is None else onnx.load(str(source.path))
    try:
        return seconds_per_sample(model, feed, samples, runs=RUNS)
    except Exception:  # noqa: BLE001 - timing is never a reason to fail
        return None


def random_input(shape: Sequence[int], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(dtype)


def option_seconds(options: Sequence[Option], dense_seconds: float,
                   measured: Sequence[tuple[int, float]]) -> list[float]:
    """Each option's predicted seconds: the dense one as measured; a factor form interpolated linearly in MACs
    through the measured factor forms ((MACs, seconds) pairs; extended as a line through the ends, below the
    smallest at least in proportion to MACs, above the largest at least the largest's time; one point:
    proportional to MACs). Timing noise can tilt the line through the ends either way; it never makes a form
    free or a bigger form faster than a measured smaller one."""
    points = sorted(measured)
    out = []
    for o in options:
        if o.rank is None:
            out.append(dense_seconds)
        elif not points:
            dense_macs = options[0].macs or 1
            out.append(dense_seconds * o.macs / dense_macs)
        elif len(points) == 1:
            macs, secs = points[0]
            out.append(secs * o.macs / max(macs, 1))
        else:
            xs = np.array([p[0] for p in points], dtype=np.float64)
            ys = np.array([p[1] for p in points], dtype=np.float64)
            if o.macs < xs[0] or o.macs > xs[-1]:
                i, j = (0, 1) if o.macs < xs[0] else (-2, -1)
                slope = (ys[j] - ys[i]) / (xs[j] - xs[i]) if xs[j] != xs[i] else 0.0
                value = ys[i] + slope * (o.macs - xs[i])
                if o.macs < xs[0]:  # a noisy slope must not make a smaller form free: at least proportional
                    value = max(value, ys[0] * o.macs / max(xs[0], 1.0))
                else:  # nor a larger form cheaper than the largest one measured
                    value = max(value, ys[-1])
            else:
                value = float(np.interp(o.macs, xs, ys))
            out.append(float(value))
    return out
