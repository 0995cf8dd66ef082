"""Comparisons of two models' outputs: per-output error statistics, the tolerance rule, top-1 agreement."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist

import numpy as np

from .accuracy import (
    ARGMAX_METRICS,
    LABELS,
    Readout,
    check_labels,
    drop_upper_bound,
    read_out,
    require_argmax_metric,
    run_labels,
    unit_correct,
)
from .errors import CollapseError, Param
from .inputs import dims_text
from .report import ErrorStats, Verification

CHUNK = 1 << 20  # elements compared at once

# (atol, rtol) by dtype: loose enough for float reassociation, tight enough to catch a wrong fold.
TOLERANCES = {
    np.dtype(np.float16): (1e-2, 1e-2),
    np.dtype(np.float32): (1e-4, 1e-3),
    np.dtype(np.float64): (1e-8, 1e-7),
}


def default_tolerance(dtype: np.dtype) -> tuple[float, float]:
    """(atol, rtol) for comparing outputs of ``dtype``; exact for integers and booleans."""
    return TOLERANCES.get(np.dtype(dtype), (0.0, 0.0))


def compare(
    name: str, expected: Iterable[np.ndarray], actual: Iterable[np.ndarray],
    atol: float | None = None, rtol: float | None = None,
) -> ErrorStats:
    """Error statistics of ``actual`` against ``expected`` over all input sets.

    Passes when every element satisfies |a - e| <= atol + rtol * |e| (NaN matches NaN, inf matches
    the same inf); ``required_atol`` is the smallest atol that would pass at this rtol.
    """
    tally = ErrorTally(atol, rtol)
    for e, a in zip(expected, actual):
        tally.add(np.asarray(e), np.asarray(a))
    return tally.stats(name)


class ErrorTally:
    """The error statistics of ``compare``, merged input set by input set as they come (an output's
    values for all sets are never needed at once); the first array added sets the default tolerance."""

    def __init__(self, atol: float | None, rtol: float | None):
        self.atol, self.rtol = atol, rtol
        self.max_abs = self.max_rel = self.required = self.total = 0.0
        self.count = self.compared = self.elements = 0
        self.differs = False  # shapes differed in some set: the output fails, at infinite error
        self.dtype_kind = ""  # the first array's dtype kind

    def add(self, e: np.ndarray, a: np.ndarray) -> None:
        """Take in one input set's arrays (the reference's ``e``, the candidate's ``a``)."""
        self.dtype_kind = self.dtype_kind or e.dtype.kind
        if self.atol is None or self.rtol is None:
            d_atol, d_rtol = default_tolerance(e.dtype)
            self.atol = d_atol if self.atol is None else self.atol
            self.rtol = d_rtol if self.rtol is None else self.rtol
        self.elements += e.size
        if e.shape != a.shape:
            self.differs = True
            self.compared += 1  # a mismatch of shapes is a real difference
            return
        self.compared += _compared(e, a)
        e, a = e.reshape(-1), a.reshape(-1)
        for start in range(0, e.size, CHUNK):  # float64 copies of a slice at a time, not of the whole output
            diff, mag = _differences(e[start:start + CHUNK], a[start:start + CHUNK])
            self.max_abs = max(self.max_abs, float(diff.max()))
            with np.errstate(divide="ignore", invalid="ignore"):  # a difference where the reference is 0: inf
                rel = np.where(mag > 0, diff / mag, np.where(diff > 0, np.inf, 0.0))
            self.max_rel = max(self.max_rel, float(rel.max()))
            self.required = max(self.required, float((diff - self.rtol * mag).max()))
            self.total += float(diff.sum())
            self.count += diff.size

    def stats(self, name: str) -> ErrorStats:
        """The statistics of what was added, as output ``name``'s."""
        atol, rtol = self.atol or 0.0, self.rtol or 0.0
        if self.differs:
            inf = float("inf")
            return ErrorStats(name, inf, inf, inf, inf, atol, rtol, False)
        required = max(self.required, 0.0)
        mean = self.total / self.count if self.count else 0.0
        return ErrorStats(name, self.max_abs, self.max_rel, mean, required, atol, rtol, required <= atol)


def _differences(e: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|a - e| (0 where both are the same NaN or infinity, infinite where one is NaN) and the magnitude
    the relative tolerance scales (|e|, 0 where e is not finite), in float64; integers and booleans: 1
    where they differ, magnitude 0."""
    if e.dtype.kind not in "fc":
        return (a != e).astype(np.float64), np.zeros(e.shape)
    e64, a64 = e.astype(np.float64), a.astype(np.float64)
    if np.isfinite(e64).all() and np.isfinite(a64).all():  # the usual case, without the NaN bookkeeping
        return np.abs(a64 - e64), np.abs(e64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a64 - e64)
    same = (e64 == a64) | (np.isnan(e64) & np.isnan(a64))
    diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
    return diff, np.where(np.isfinite(e64), np.abs(e64), 0.0)


def compared_elements(expected: Iterable[np.ndarray], actual: Iterable[np.ndarray]) -> int:
    """How many elements a comparison of ``actual`` with ``expected`` really tests: those whose reference
    value is finite, or that differ from it (NaN matching NaN, or an inf matching itself, proves nothing)."""
    count = 0
    for e, a in zip(expected, actual):
        e, a = np.asarray(e), np.asarray(a)
        if e.shape != a.shape:
            return max(count, 1)  # a mismatch of shapes is a real difference
        count += _compared(e, a)
    return count


def _compared(e: np.ndarray, a: np.ndarray) -> int:
    """``compared_elements`` of one pair of arrays of the same shape."""
    if e.dtype.kind not in "fc":
        return e.size
    with np.errstate(invalid="ignore"):
        same = (e == a) | (np.isnan(e) & np.isnan(a))
    return int(np.count_nonzero(np.isfinite(e) | ~same))


def top1_agreement(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], name: str = "",
                   unit: str = "row", strip: Sequence[int] = ()) -> float:
    """Fraction of units whose argmax over the last axis agrees (see ``agreement_counts``)."""
    same, total = agreement_counts(expected, actual, name, unit, strip)
    return same / total


def agreement_lower_bound(same: int, total: int, confidence: float) -> float:
    """The one-sided Wilson score lower bound, at ``confidence``, of a rate measured as ``same`` of ``total``:
    a rate that the model's true agreement, on independent rows drawn like these, exceeds with about that
    probability (the measured rate itself at confidence 0.5). A search that keeps the smallest model passing
    on its held-out rows keeps, near the boundary, the ones that were lucky there; judging the bound instead
    of the rate undoes that."""
    if not total:
        return 0.0
    z = NormalDist().inv_cdf(confidence)
    p, z2 = same / total, z * z
    centre = p + z2 / (2 * total)
    spread = z * math.sqrt(max(p * (1 - p) / total + z2 / (4 * total * total), 0.0))
    return min(max((centre - spread) / (1 + z2 / total), 0.0), p)  # never above the rate (rounding)


def units_needed(min_agreement: float, confidence: float) -> int:
    """The fewest units that can show ``min_agreement`` at ``confidence`` (all of them agreeing): the bound
    of n of n is n / (n + z^2)."""
    z2 = NormalDist().inv_cdf(confidence) ** 2
    n = max(1, math.ceil(z2 * min_agreement / max(1 - min_agreement, 1e-12)))
    while agreement_lower_bound(n, n, confidence) < min_agreement:
        n += 1
    return n


def agreement_counts(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], name: str = "",
                     unit: str = "row", strip: Sequence[int] = ()) -> tuple[int, int]:
    """How many units agree, and how many were compared: a unit agrees when its argmax over the last axis
    does. ``unit`` "row": every row (all axes but the last); "sample" (metric "sequence"): an item along
    axis 0 agrees when the argmax agrees at every one of its positions (a tagger's labels); "ctc" (metric
    "ctc"): a sample [positions, classes] agrees when its CTC decoding (argmax path, repeats merged, blank
    class 0 dropped: a text or speech recogniser's output) is the same, ``strip`` classes dropped from both
    ends. Units whose reference holds NaN or infinity do not count. CollapseError for an output without an
    axis of at least two classes (its argmax would always agree), of the wrong rank for the unit, with
    nothing to compare, or without a ``strip`` class."""
    same = total = 0
    for e, a in zip(expected, actual):
        hits, units = _agreement_of(np.asarray(e), np.asarray(a), name, unit, strip)
        same, total = same + hits, total + units
    if not total:
        raise _nothing_finite(name, unit)
    return same, total


def _agreement_of(e: np.ndarray, a: np.ndarray, name: str, unit: str, strip: Sequence[int]) -> tuple[int, int]:
    """``agreement_counts`` of one input set's arrays (no unit when the shapes differ)."""
    return _agreement(*_readouts(e, a, name, unit, strip), unit)


def _readouts(e: np.ndarray, a: np.ndarray, name: str, unit: str, strip: Sequence[int]
              ) -> tuple[Readout, Readout | None]:
    """What the reference's and the candidate's arrays read (the candidate's None when its shape differs),
    once the reference's shape is checked to suit ``unit`` (see ``agreement_counts``)."""
    metric = _METRIC_OF[unit]
    wrong_rank = (unit == "sample" and e.ndim < 2) or (unit == "ctc" and e.ndim != 3)
    if e.ndim == 0 or e.shape[-1] < 2 or wrong_rank:
        if wrong_rank and e.ndim and e.shape[-1] >= 2:
            why = {"sample": "; it needs an axis after the samples' axis",
                   "ctc": "; it reads outputs of shape [samples, positions, classes]"}[unit]
        else:
            why = (f", so its argmax compares nothing; {metric} needs a last axis of at least 2 classes" +
                   {"row": "", "sample": " after the samples' axis",
                    "ctc": " in an output of shape [samples, positions, classes]"}[unit])
        raise CollapseError(Param("metric", metric), f": output {name!r} has shape {dims_text(e.shape)}{why} (use ",
                            Param("metric", "allclose"), ")")
    beyond = [c for c in strip if c >= e.shape[-1]]
    if unit == "ctc" and beyond:
        raise CollapseError(Param("ctc_strip"), f" names class {beyond[0]}, but output {name!r} has "
                            f"{e.shape[-1]} classes (0 to {e.shape[-1] - 1})")
    return read_out(e, unit, strip), read_out(a, unit, strip) if a.shape == e.shape else None


def _agreement(want: Readout, got: Readout | None, unit: str) -> tuple[int, int]:
    """Units of ``got`` that read as ``want`` does, and units compared (those whose reference is finite)."""
    if got is None or not want.argmax.size:
        return 0, 0
    finite = want.finite
    hits = (want.argmax == got.argmax) & finite
    if unit != "row":  # one unit per sample: every position must agree (an empty axes tuple keeps rows)
        axes = tuple(range(1, finite.ndim))
        finite = finite.all(axis=axes)
        if unit == "ctc":
            hits = np.array([w == g for w, g in zip(want.decoded, got.decoded)], dtype=bool) & finite
        else:
            hits = hits.all(axis=axes)
    return int(hits.sum()), int(finite.sum())


def _nothing_finite(name: str, unit: str) -> CollapseError:
    return CollapseError(Param("metric", _METRIC_OF[unit]), f": output {name!r} has no row with finite values to compare")


# the metrics judged by argmax agreement (and min_agreement): metric -> what one unit of agreement is
AGREEMENT_METRICS = ARGMAX_METRICS
_METRIC_OF = {unit: metric for metric, unit in AGREEMENT_METRICS.items()}

Tolerance = float | Mapping[str, float] | None  # one for all outputs, or by output name


def tolerance_of(tolerance: Tolerance, name: str) -> float | None:
    """The tolerance that output ``name`` is held to (None: its dtype's default)."""
    return tolerance.get(name) if isinstance(tolerance, Mapping) else tolerance


def judge(expected: Iterable[Mapping[str, np.ndarray]], actual: Iterable[Mapping[str, np.ndarray]], where: str,
          options, names: tuple[str, str] | None = None) -> Verification:
    """``compare_outputs`` with the criterion an ``Options`` asks for (tolerances, metric, agreement, strip)."""
    return compare_outputs(expected, actual, options.atol, options.rtol, where, options.metric,
                           options.min_agreement, options.ctc_strip, options.confidence, names, options.labels,
                           options.max_drop)


def _judged_agreement(stat) -> float:
    """The agreement an output was judged by (its bound, with a confidence; one less the accuracy drop, or its
    bound, for an output judged against labels); 1 for an allclose output."""
    if stat.max_drop is not None:
        return 1 - (stat.accuracy_drop_bound if stat.accuracy_drop_bound is not None else stat.accuracy_drop)
    if stat.agreement_bound is not None:
        return stat.agreement_bound
    return 1.0 if stat.agreement is None else stat.agreement


def verdict_text(verdict: Verification) -> str:
    """A verdict in a few words: the worst output's agreement (or max abs error), passed or failed; a
    problem of shape, dtype or a missing output first, as it says why."""
    worst = min(verdict.outputs, key=lambda s: (s.passed, _judged_agreement(s)), default=None)
    if worst is None:
        return "passed" if verdict.passed else "failed"
    if not verdict.passed and verdict.problems and not math.isfinite(worst.max_abs):
        return f"{verdict.problems[0]}: failed"
    shown = f"agreement {100 * worst.agreement:.1f}%" if worst.agreement is not None else f"max abs {worst.max_abs:.2g}"
    if worst.agreement_bound is not None:
        shown += f" (bound {100 * worst.agreement_bound:.1f}%)"
    if worst.accuracy is not None:
        shown += f", accuracy {100 * worst.accuracy:.1f}% against {100 * worst.reference_accuracy:.1f}%"
        if worst.max_drop is not None:
            shown += f" (drop {100 * worst.accuracy_drop:.2g}" + (
                "" if worst.accuracy_drop_bound is None else f", bound {100 * worst.accuracy_drop_bound:.2g}") + " pt)"
    return f"{shown} {'passed' if verdict.passed else 'failed'}"


def compare_outputs(
    expected: Iterable[Mapping[str, np.ndarray]], actual: Iterable[Mapping[str, np.ndarray]],
    atol: Tolerance, rtol: Tolerance, source: str, metric: str = "allclose", min_agreement: float = 0.99,
    ctc_strip: Sequence[int] = (), confidence: float | None = None, names: tuple[str, str] | None = None,
    labels: str | os.PathLike | Mapping[str, np.ndarray] | None = None, max_drop: float | None = None,
) -> Verification:
    """Compare two models' outputs (sequences of input sets, or iterables that give them one at a time:
    one set of each is in memory at a time), output by output.

    ``atol`` and ``rtol``: one value for every output, or a value per output name (an output not named,
    or None: the default for its dtype, see ``default_tolerance``).
    ``metric="top1"``: float outputs pass when their argmax over the last axis agrees on at least
    ``min_agreement`` of the rows (error statistics are still reported); other outputs use allclose.
    ``metric="sequence"``: the same, counting whole samples (every position's argmax must agree);
    ``metric="ctc"``: samples whose CTC decoding agrees (see ``top1_agreement``), the ``ctc_strip``
    classes dropped from both ends of each. With ``confidence``, an agreement metric passes when the lower
    confidence bound of the agreement (``agreement_lower_bound``, kept as ``agreement_bound``) is at least
    ``min_agreement``, not the measured fraction. With ``names`` (the two models', as the problems name
    them), outputs missing from one model or of another shape or dtype in the first set are problems too.
    With ``labels`` (an agreement metric, see ``accuracy``), both models' accuracies against them are counted
    in the same units, and with ``max_drop`` a labelled output passes when the candidate's accuracy is at
    most that below the reference's (with ``confidence``: the drop's upper bound, ``drop_upper_bound``)
    instead of by its agreement.
    """
    comparison = Comparison(atol, rtol, metric, min_agreement, ctc_strip, confidence, names, labels, max_drop)
    for e, a in zip(expected, actual, strict=True):  # strict: a generator is run to its end, its session freed
        comparison.add(e, a)
    return comparison.verdict(source)


class _Output:
    """What ``Comparison`` has merged of one output so far."""

    def __init__(self, atol: float | None, rtol: float | None):
        self.tally = ErrorTally(atol, rtol)
        self.failed = False  # missing in the candidate, or a sequence of another length: fails at infinite error
        self.tensors = True  # every value so far an array (a sequence or an optional output is not judged by agreement)
        self.same = self.units = 0
        self.rows = 0  # rows of the labels read so far
        self.reference_right = self.candidate_right = 0  # units each model read right (with labels)
        self.worse = self.better = self.labelled = 0  # units right for the reference only, the candidate only; all


class Comparison:
    """Two models' outputs compared input set by input set (``add``), the statistics merged as they come,
    so that neither model's outputs for every set need be in memory at once; ``verdict`` judges what was
    added (see ``compare_outputs``, which is this over two sequences)."""

    def __init__(self, atol: Tolerance, rtol: Tolerance, metric: str = "allclose", min_agreement: float = 0.99,
                 ctc_strip: Sequence[int] = (), confidence: float | None = None,
                 names: tuple[str, str] | None = None,
                 labels: str | os.PathLike | Mapping[str, np.ndarray] | None = None, max_drop: float | None = None):
        self.atol, self.rtol, self.metric, self.min_agreement = atol, rtol, metric, min_agreement
        self.ctc_strip, self.confidence, self.names = tuple(ctc_strip), confidence, names
        if labels is not None:
            require_argmax_metric(metric)
        self.labels = {} if labels is None else run_labels(labels)
        self.max_drop = max_drop
        self.sets = 0
        self.outputs: dict[str, _Output] = {}
        self.problems: list[str] = []
        self.retyped: set[str] = set()  # outputs whose dtype differs in the candidate: they fail

    def add(self, expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> None:
        """Take in one input set's outputs (the reference's, then the candidate's), by output name."""
        if not self.sets:
            self.problems += output_mismatches(expected, actual, self.names or ("the reference", "the model judged"))
            # an output of another dtype is another model, however close its values
            self.retyped = {name for name, e in expected.items() if isinstance(e, np.ndarray)
                            and isinstance(actual.get(name), np.ndarray) and actual[name].dtype != e.dtype}
            check_labels(self.labels, list(expected))
        self.sets += 1
        for name, e in expected.items():
            out = self.outputs.get(name)
            if out is None:
                out = self.outputs[name] = _Output(tolerance_of(self.atol, name), tolerance_of(self.rtol, name))
            if out.failed:
                continue
            if name not in actual:
                out.failed = True
                continue
            a = actual[name]
            if isinstance(e, np.ndarray) and isinstance(a, np.ndarray):
                pairs = [(e, a)]
            else:  # a sequence (or an optional) output: compared item by item
                out.tensors = False
                items = _items([e]), _items([a])
                if items[0] is None or items[1] is None or len(items[0][0]) != len(items[1][0]):
                    out.failed = True
                    continue
                pairs = list(zip(items[0][0], items[1][0]))
            read = None
            for x, y in pairs:
                x, y = np.asarray(x), np.asarray(y)
                out.tally.add(x, y)
                if self.metric in AGREEMENT_METRICS and out.tensors and x.dtype.kind == "f":
                    read = _readouts(x, y, name, AGREEMENT_METRICS[self.metric], self.ctc_strip)
                    same, units = _agreement(*read, AGREEMENT_METRICS[self.metric])
                    out.same, out.units = out.same + same, out.units + units
            if name in self.labels:
                self._count_right(name, out, read if out.tensors else None)

    def _count_right(self, name: str, out: _Output, read: tuple[Readout, Readout | None] | None) -> None:
        """Both models' accuracies on one input set's rows of labelled output ``name`` (see ``accuracy``), from
        what the two arrays read (None: the output is not an array of scores)."""
        if read is None or len(read[0].shape) < 2:
            raise CollapseError(LABELS, f" labels output {name!r}, which is not an array of scores with rows along "
                                "axis 0 and classes on the last axis: only such outputs can be read against labels")
        e, a = read
        labels, rows = self.labels[name], e.shape[0]
        if out.rows + rows > labels.shape[0]:
            raise CollapseError(LABELS, f": array {name!r} has {labels.shape[0]} rows, fewer than the verification "
                                "rows (one label row per row of the inputs, in their order)")
        part = labels[out.rows:out.rows + rows]
        out.rows += rows
        unit = AGREEMENT_METRICS[self.metric]
        ref, counted = unit_correct(e, part, unit, self.ctc_strip, name)
        cand = unit_correct(a, part, unit, self.ctc_strip, name)[0] if a is not None else np.zeros_like(ref)
        out.reference_right += int(ref.sum())
        out.candidate_right += int(cand.sum())
        out.worse += int((ref & ~cand).sum())
        out.better += int((cand & ~ref).sum())
        out.labelled += int(counted.sum())

    def verdict(self, source: str) -> Verification:
        """The verification of everything added, on inputs described by ``source``."""
        if not self.sets:
            raise CollapseError("verification compared nothing: there was no input set")
        stats, compared, problems = [], 0, list(self.problems)
        confidence, target = self.confidence, self.min_agreement
        for name, out in self.outputs.items():
            if out.failed:
                stats.append(_mismatch(name, out.tally.atol, out.tally.rtol))
                continue
            stat = out.tally.stats(name)
            if stat.passed and not out.tally.compared and out.tally.elements:
                raise CollapseError(f"output {name!r} compared no element: the original model's values are all "
                                    "NaN or infinite, so verification would prove nothing; give inputs on which it "
                                    "is finite (", Param("inputs"), ")")
            compared += out.tally.compared
            judged_by_labels = name in self.labels and self.max_drop is not None
            if self.metric in AGREEMENT_METRICS and out.tensors and out.tally.dtype_kind == "f":
                if not out.units:
                    raise _nothing_finite(name, AGREEMENT_METRICS[self.metric])
                stat.agreement = out.same / out.units
                if confidence is not None:
                    stat.agreement_bound = agreement_lower_bound(out.same, out.units, confidence)
                    needed = units_needed(target, confidence)
                    if out.units < needed and not judged_by_labels:
                        unit = "rows" if self.metric == "top1" else "samples"
                        problems.append(f"output {name!r}: at --confidence {confidence:g}, {out.units} {unit} cannot "
                                        f"show {100 * target:g}% agreement (all of them agreeing give a bound of "
                                        f"{100 * agreement_lower_bound(out.units, out.units, confidence):.1f}%); "
                                        f"it needs at least {needed}")
                measured = stat.agreement if confidence is None else stat.agreement_bound
                stat.passed = measured >= target and not out.tally.differs  # units of other shapes not counted
            if name in self.labels:
                self._judge_accuracy(name, out, stat)
            if name in self.retyped:
                stat.passed = False
                if self.names is None:
                    problems.append(f"output {name!r} has another dtype in the candidate")
            stats.append(stat)
        if stats and all(s.passed for s in stats) and not compared:
            raise CollapseError("verification compared no element: every output of the original model is empty, "
                                "so it would prove nothing; give inputs that make them non-empty")
        return Verification(all(s.passed for s in stats), self.sets, source + self._criterion_text(), stats, problems)

    def _criterion_text(self) -> str:
        """How the outputs were judged, for the verification's description ('' for allclose)."""
        if self.metric not in AGREEMENT_METRICS:
            return ""
        strip = self.ctc_strip
        ends = (f" (class{'es' if len(strip) > 1 else ''} {', '.join(map(str, strip))} stripped from both ends)"
                if self.metric == "ctc" and strip else "")
        agreed = {"top1": "top-1 agreement", "sequence": "whole-sample top-1 agreement", "ctc": "same CTC decoding"}
        read = {"top1": "top-1", "sequence": "whole-sample top-1", "ctc": "CTC decoding"}  # what is right or wrong
        level = "" if self.confidence is None else f"{100 * self.confidence:g}% "
        agreement = (f"{agreed[self.metric]}{f' (its {level}lower bound)' if level else ''} >= "
                     f"{100 * self.min_agreement:g}%")
        if self.max_drop is None:
            return f", metric {agreement}{ends}"
        unlabelled = [n for n, o in self.outputs.items() if n not in self.labels and o.tensors and o.tally.dtype_kind == "f"]
        accuracy = (f", metric {read[self.metric]} accuracy against "
                    f"the labels at most {100 * self.max_drop:g} point(s) below the reference's"
                    + (f" (the drop's {level}upper bound)" if level else ""))
        return accuracy + (f"; outputs without labels: {agreement}" if unlabelled else "") + ends

    def _judge_accuracy(self, name: str, out: _Output, stat: ErrorStats) -> None:
        """Fill ``stat``'s accuracies of labelled output ``name``; with ``max_drop``, pass it by the drop."""
        labels = self.labels[name]
        if out.rows != labels.shape[0]:
            raise CollapseError(LABELS, f": array {name!r} has {labels.shape[0]} rows, but verification ran "
                                f"{out.rows} (one label row per row of the inputs, in their order)")
        if not out.labelled:
            raise CollapseError(LABELS, f": array {name!r} labels no unit (every label is negative)")
        stat.reference_accuracy = out.reference_right / out.labelled
        stat.accuracy = out.candidate_right / out.labelled
        stat.accuracy_drop = stat.reference_accuracy - stat.accuracy
        if self.max_drop is None:
            return
        stat.max_drop = self.max_drop
        if self.confidence is not None:
            stat.accuracy_drop_bound = drop_upper_bound(out.worse, out.better, out.labelled, self.confidence)
        judged = stat.accuracy_drop if stat.accuracy_drop_bound is None else stat.accuracy_drop_bound
        stat.passed = judged <= self.max_drop + 1e-12 and not out.tally.differs


def _mismatch(name: str, atol: float | None, rtol: float | None) -> ErrorStats:
    """The statistics of an output that differs in kind (missing, or a sequence of another length)."""
    inf = float("inf")
    return ErrorStats(name, inf, inf, inf, inf, atol or 0.0, rtol or 0.0, False)


def _items(values: Sequence) -> list[list[np.ndarray]] | None:
    """Each input set's value of a sequence or optional output as a list of arrays (an empty optional: no
    item); None if a value is of another kind."""
    out = []
    for value in values:
        if value is None:
            out.append([])
        elif isinstance(value, np.ndarray):
            out.append([value])
        elif isinstance(value, (list, tuple)) and all(isinstance(v, np.ndarray) for v in value):
            out.append(list(value))
        else:
            return None
    return out


def output_mismatches(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray],
                      names: tuple[str, str] = ("the reference", "the candidate")) -> list[str]:
    """Why outputs cannot be compared element by element: missing in one model, or another shape or dtype."""
    problems = []
    for name, e in expected.items():
        if name not in actual:
            problems.append(f"output {name!r} of {names[0]} is not an output of {names[1]}")
            continue
        if isinstance(e, (list, tuple)) or isinstance(actual[name], (list, tuple)):  # sequences: compared item by item
            continue
        e, a = np.asarray(e), np.asarray(actual[name])
        if e.shape != a.shape:
            problems.append(f"output {name!r} has shape {dims_text(e.shape)} in {names[0]} but {dims_text(a.shape)} in "
                            f"{names[1]}")
        elif e.dtype != a.dtype:
            problems.append(f"output {name!r} is {e.dtype} in {names[0]} but {a.dtype} in {names[1]}")
    return problems
