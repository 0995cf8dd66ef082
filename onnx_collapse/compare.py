"""Comparisons of two models' outputs: per-output error statistics, the tolerance rule, top-1 agreement."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

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
    name: str, expected: Sequence[np.ndarray], actual: Sequence[np.ndarray],
    atol: float | None = None, rtol: float | None = None,
) -> ErrorStats:
    """Error statistics of ``actual`` against ``expected`` over all input sets.

    Passes when every element satisfies |a - e| <= atol + rtol * |e| (NaN matches NaN, inf matches
    the same inf); ``required_atol`` is the smallest atol that would pass at this rtol.
    """
    dtype = np.asarray(expected[0]).dtype
    d_atol, d_rtol = default_tolerance(dtype)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    max_abs = max_rel = required = total = 0.0
    count = 0
    tiny = np.finfo(np.float64).tiny
    for e, a in zip(expected, actual):
        e = np.asarray(e)
        a = np.asarray(a)
        if e.shape != a.shape:
            return ErrorStats(name, float("inf"), float("inf"), float("inf"), float("inf"), atol, rtol, False)
        e, a = e.reshape(-1), a.reshape(-1)
        for start in range(0, e.size, CHUNK):  # float64 copies of a slice at a time, not of the whole output
            diff, mag = _differences(e[start:start + CHUNK], a[start:start + CHUNK])
            max_abs = max(max_abs, float(diff.max()))
            with np.errstate(over="ignore"):  # a difference where the reference is ~0: inf, as documented
                max_rel = max(max_rel, float((diff / np.maximum(mag, tiny)).max()))
            required = max(required, float((diff - rtol * mag).max()))
            total += float(diff.sum())
            count += diff.size
    mean = total / count if count else 0.0
    required = max(required, 0.0)
    return ErrorStats(name, max_abs, max_rel, mean, required, atol, rtol, required <= atol)


def _differences(e: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|a - e| (0 where both are the same NaN or infinity, infinite where one is NaN) and the magnitude
    the relative tolerance scales (|e|, 0 where e is not finite), in float64; integers and booleans: 1
    where they differ, magnitude 0."""
    if e.dtype.kind not in "fc":
        return (a != e).astype(np.float64), np.zeros(e.shape)
    e64, a64 = e.astype(np.float64), a.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a64 - e64)
    same = (e64 == a64) | (np.isnan(e64) & np.isnan(a64))
    diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
    return diff, np.where(np.isfinite(e64), np.abs(e64), 0.0)


def compared_elements(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> int:
    """How many elements a comparison of ``actual`` with ``expected`` really tests: those whose reference
    value is finite, or that differ from it (NaN matching NaN, or an inf matching itself, proves nothing)."""
    count = 0
    for e, a in zip(expected, actual):
        e, a = np.asarray(e), np.asarray(a)
        if e.shape != a.shape:
            return max(count, 1)  # a mismatch of shapes is a real difference
        if e.dtype.kind not in "fc":
            count += e.size
            continue
        with np.errstate(invalid="ignore"):
            same = (e == a) | (np.isnan(e) & np.isnan(a))
        count += int(np.count_nonzero(np.isfinite(e) | ~same))
    return count


def ctc_decode(labels: np.ndarray, blank: int = 0, strip: Sequence[int] = ()) -> list[int]:
    """A CTC label path read as its output: repeats merged, then the ``blank`` class dropped, then the
    ``strip`` classes (a recogniser's space, say) dropped from both ends."""
    out, last = [], None
    for label in labels.tolist():
        if label != last and label != blank:
            out.append(label)
        last = label
    start, end = 0, len(out)
    while start < end and out[start] in strip:
        start += 1
    while end > start and out[end - 1] in strip:
        end -= 1
    return out[start:end]


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
    metric = {"row": "top1", "sample": "sequence", "ctc": "ctc"}[unit]
    same = total = 0
    for e, a in zip(expected, actual):
        e, a = np.asarray(e), np.asarray(a)
        wrong_rank = (unit == "sample" and e.ndim < 2) or (unit == "ctc" and e.ndim != 3)
        if e.ndim == 0 or e.shape[-1] < 2 or wrong_rank:
            need = {"row": "", "sample": " after the samples' axis",
                    "ctc": " in an output of shape [samples, positions, classes]"}[unit]
            raise CollapseError(Param("metric", metric), f": output {name!r} has shape {dims_text(e.shape)}, so "
                                f"its argmax compares nothing; {metric} needs a last axis of at least 2 classes"
                                f"{need} (use ", Param("metric", "allclose"), ")")
        beyond = [c for c in strip if c >= e.shape[-1]]
        if unit == "ctc" and beyond:
            raise CollapseError(Param("ctc_strip"), f" names class {beyond[0]}, but output {name!r} has "
                                f"{e.shape[-1]} classes (0 to {e.shape[-1] - 1})")
        if e.shape != a.shape or e.size == 0:
            continue
        finite = np.isfinite(e).all(axis=-1)
        want, got = np.argmax(e, axis=-1), np.argmax(a, axis=-1)
        hits = (want == got) & finite
        if unit != "row":  # one unit per sample: every position must agree (an empty axes tuple keeps rows)
            axes = tuple(range(1, finite.ndim))
            finite = finite.all(axis=axes)
            if unit == "ctc":
                hits = np.array([ctc_decode(w, strip=strip) == ctc_decode(g, strip=strip)
                                 for w, g in zip(want, got)]) & finite
            else:
                hits = hits.all(axis=axes)
        same += int(hits.sum())
        total += int(finite.sum())
    if not total:
        raise CollapseError(Param("metric", metric), f": output {name!r} has no row with finite values to compare")
    return same, total


# the metrics judged by argmax agreement (and min_agreement): metric -> what one unit of agreement is
AGREEMENT_METRICS = {"top1": "row", "sequence": "sample", "ctc": "ctc"}

Tolerance = float | Mapping[str, float] | None  # one for all outputs, or by output name


def tolerance_of(tolerance: Tolerance, name: str) -> float | None:
    """The tolerance that output ``name`` is held to (None: its dtype's default)."""
    return tolerance.get(name) if isinstance(tolerance, Mapping) else tolerance


def judge(expected: Sequence[Mapping[str, np.ndarray]], actual: Sequence[Mapping[str, np.ndarray]], where: str,
          options) -> Verification:
    """``compare_outputs`` with the criterion an ``Options`` asks for (tolerances, metric, agreement, strip)."""
    return compare_outputs(expected, actual, options.atol, options.rtol, where, options.metric,
                           options.min_agreement, options.ctc_strip, options.confidence)


def _judged_agreement(stat) -> float:
    """The agreement an output was judged by (its bound, with a confidence); 1 for an allclose output."""
    if stat.agreement_bound is not None:
        return stat.agreement_bound
    return 1.0 if stat.agreement is None else stat.agreement


def verdict_text(verdict: Verification) -> str:
    """A verdict in a few words: the worst output's agreement (or max abs error), passed or failed."""
    worst = min(verdict.outputs, key=lambda s: (s.passed, _judged_agreement(s)), default=None)
    if worst is None:
        return "passed" if verdict.passed else "failed"
    shown = f"agreement {100 * worst.agreement:.1f}%" if worst.agreement is not None else f"max abs {worst.max_abs:.2g}"
    if worst.agreement_bound is not None:
        shown += f" (bound {100 * worst.agreement_bound:.1f}%)"
    return f"{shown} {'passed' if verdict.passed else 'failed'}"


def compare_outputs(
    expected: Sequence[Mapping[str, np.ndarray]], actual: Sequence[Mapping[str, np.ndarray]],
    atol: Tolerance, rtol: Tolerance, source: str, metric: str = "allclose", min_agreement: float = 0.99,
    ctc_strip: Sequence[int] = (), confidence: float | None = None,
) -> Verification:
    """Compare two models' outputs (lists of input sets), output by output.

    ``atol`` and ``rtol``: one value for every output, or a value per output name (an output not named,
    or None: the default for its dtype, see ``default_tolerance``).
    ``metric="top1"``: float outputs pass when their argmax over the last axis agrees on at least
    ``min_agreement`` of the rows (error statistics are still reported); other outputs use allclose.
    ``metric="sequence"``: the same, counting whole samples (every position's argmax must agree);
    ``metric="ctc"``: samples whose CTC decoding agrees (see ``top1_agreement``), the ``ctc_strip``
    classes dropped from both ends of each. With ``confidence``, an agreement metric passes when the lower
    confidence bound of the agreement (``agreement_lower_bound``, kept as ``agreement_bound``) is at least
    ``min_agreement``, not the measured fraction.
    """
    stats, compared, problems = [], 0, []
    tolerances = atol, rtol
    for name in expected[0]:
        atol, rtol = (tolerance_of(t, name) for t in tolerances)
        if name not in actual[0]:
            stats.append(_mismatch(name, atol, rtol))
            continue
        exp, act = [e[name] for e in expected], [a[name] for a in actual]
        tensors = all(isinstance(v, np.ndarray) for v in [*exp, *act])
        if not tensors:  # a sequence (or an optional) output: compared item by item
            exp, act = _items(exp), _items(act)
            if exp is None or act is None or [len(e) for e in exp] != [len(a) for a in act]:
                stats.append(_mismatch(name, atol, rtol))
                continue
            exp, act = [v for e in exp for v in e], [v for a in act for v in a]
            if not exp:  # empty sequences or optionals on both sides: nothing to compare, nothing differs
                stats.append(ErrorStats(name, 0.0, 0.0, 0.0, 0.0, atol or 0.0, rtol or 0.0, True))
                continue
        stat = compare(name, exp, act, atol, rtol)
        count = compared_elements(exp, act)
        if stat.passed and not count and sum(np.size(e) for e in exp):
            raise CollapseError(f"output {name!r} compared no element: the original model's values are all "
                                "NaN or infinite, so verification would prove nothing; give inputs on which it "
                                "is finite (", Param("inputs"), ")")
        compared += count
        if metric in AGREEMENT_METRICS and tensors and np.asarray(exp[0]).dtype.kind == "f":
            same, total = agreement_counts(exp, act, name, AGREEMENT_METRICS[metric], ctc_strip)
            stat.agreement = same / total
            if confidence is not None:
                stat.agreement_bound = agreement_lower_bound(same, total, confidence)
                needed = units_needed(min_agreement, confidence)
                if total < needed:
                    unit = "rows" if metric == "top1" else "samples"
                    problems.append(f"output {name!r}: at --confidence {confidence:g}, {total} {unit} cannot show "
                                    f"{100 * min_agreement:g}% agreement (all of them agreeing give a bound of "
                                    f"{100 * agreement_lower_bound(total, total, confidence):.1f}%); it needs "
                                    f"at least {needed}")
            stat.passed = (stat.agreement if confidence is None else stat.agreement_bound) >= min_agreement
        stats.append(stat)
    if stats and all(s.passed for s in stats) and not compared:
        raise CollapseError("verification compared no element: every output of the original model is empty, "
                            "so it would prove nothing; give inputs that make them non-empty")
    bound = "" if confidence is None else f" (its {100 * confidence:g}% lower bound)"
    if metric == "top1":
        source += f", metric top-1 agreement{bound} >= {100 * min_agreement:g}%"
    elif metric == "sequence":
        source += f", metric whole-sample top-1 agreement{bound} >= {100 * min_agreement:g}%"
    elif metric == "ctc":
        source += f", metric same CTC decoding{bound} >= {100 * min_agreement:g}%"
        if ctc_strip:
            source += f" (class{'es' if len(ctc_strip) > 1 else ''} {', '.join(map(str, ctc_strip))} stripped " \
                      "from both ends)"
    return Verification(all(s.passed for s in stats), len(expected), source, stats, problems)


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
