"""Report data (what was found, folded, reverted, measured) and its table / JSON renderings."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import linalg

if TYPE_CHECKING:
    from .allocate import LayerSpectrum
    from .io import StagedOutput
    from .prune import PruneReport

# Version of the JSON reports (optimize/prune/analyze/verify --json), described by schemas/report.schema.json:
# the minor number grows when fields are added, the major one when a field changes or goes.
SCHEMA_VERSION = "1.6"  # 1.1: undefined_numbers, exact_bound; measured MACs (macs_basis, macs_uncounted, layer_macs)
# 1.2: measured time (folds' seconds_before/seconds_after, stats' seconds) with --budget-metric time
# 1.3: agreement_bound (the lower confidence bound of an agreement, with --confidence)
# 1.4: pruning (optimize --prune-share), truncation.budget
# 1.5: accuracy against labels (--labels, --max-drop): accuracy, reference_accuracy, accuracy_drop(_bound), max_drop
# 1.6: prune's reports described (prune_report), with removed (the share of the pairs' channels really removed), as
# in pruning.removed; truncation.met is false too when even the cheapest options exceed a given rank budget


def strict(payload: dict) -> dict:
    """``payload`` as strict JSON (RFC 8259) can hold it: each NaN or infinity becomes null, and the
    report's ``undefined_numbers`` lists where each was and what it was (see the schema)."""
    found: list[dict] = []

    def clean(value, path: str):
        if isinstance(value, float) and not math.isfinite(value):
            found.append({"path": path, "value": "NaN" if math.isnan(value) else
                          ("Infinity" if value > 0 else "-Infinity")})
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}/{str(k).replace('~', '~0').replace('/', '~1')}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}/{k}") for k, v in enumerate(value)]
        return value

    out = clean(payload, "")
    if found:
        out["undefined_numbers"] = found
    return out


def dumps(payload: dict) -> str:
    """The report as strict JSON text (no NaN or Infinity tokens; see ``strict``)."""
    return json.dumps(strict(payload), indent=2, allow_nan=False)


def write_with_report(staged: StagedOutput | None, report_file: str | os.PathLike | None,
                      report: Report | PruneReport, written: bool) -> None:
    """Commit the staged output (``io.StagedOutput``; None when no output was asked for) with ``report`` (its
    ``to_dict``) as JSON at ``report_file``, both in one commit (see ``StagedOutput.commit``), when the output
    is ``written``. An output asked for but not written (its verification failed) leaves the older output
    and report as they were, a pair; with no output asked for, the report is written alone."""
    from .io import write_text_atomic

    text = None if report_file is None else dumps(report.to_dict()) + "\n"
    if staged is not None and written:
        staged.commit({} if text is None else {report_file: text})
    elif staged is None and text is not None:
        write_text_atomic(Path(report_file), text)


@dataclass
class ErrorStats:
    """Comparison of one tensor against its reference, Polygraphy style."""

    name: str
    max_abs: float
    max_rel: float
    mean_abs: float
    required_atol: float  # smallest atol that passes at the configured rtol
    atol: float
    rtol: float
    passed: bool
    agreement: float | None = None  # top-1 metric: fraction of rows whose argmax matches
    agreement_bound: float | None = None  # with a confidence: the agreement's lower bound, which passing is judged by
    # with labels: each model's accuracy against them on the same units, and the drop from the reference's
    accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_drop: float | None = None
    max_drop: float | None = None  # with --max-drop: the largest drop that passes (the output is judged by it)
    accuracy_drop_bound: float | None = None  # with a confidence too: the drop's upper bound, which passing is judged by


@dataclass
class Verification:
    """Whole-model comparison in onnxruntime."""

    passed: bool
    n_input_sets: int
    inputs: str  # where the inputs came from: "random (seed 0)" or a file name
    outputs: list[ErrorStats] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # outputs that cannot be compared: missing, shape, dtype

    def to_dict(self) -> dict:
        """The JSON payload of ``onnx-collapse verify --json``."""
        return {"schema_version": SCHEMA_VERSION} | dataclasses.asdict(self)

    def to_json(self) -> str:
        return dumps(self.to_dict())


@dataclass
class Attempt:
    """An earlier form of a chain that verification undid (a truncation whose own error failed, say)."""

    form: str | None
    rank: int | None
    params_after: int
    macs_after: int
    predicted_error: float | None
    error: ErrorStats | None
    reason: str  # why it was undone


@dataclass
class FoldRecord:
    """One candidate chain: what it is, what we decided, and what it measured."""

    layers: list[str]  # node labels of the linear layers, in order
    activations: list[str]  # node labels of the activations between them
    dims: list[int]  # feature sizes along the chain: in, hidden..., out
    slopes: list[list[float]]  # per activation: [min slope, max slope]
    status: str  # "folded", "reverted", "skipped"
    reason: str = ""
    form: str | None = None  # "dense", "factor", "truncated"
    rank: int | None = None
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    predicted_error: float | None = None  # truncation only: relative error bound of the kept rank
    error: ErrorStats | None = None  # measured at the chain's output in onnxruntime
    # calibrated collapse (--calibrate, slopes near but not at 1): the fold was fitted to the chain's outputs
    calibrated: bool = False
    plain_error: ErrorStats | None = None  # the plain fold W1 W2 ..., measured like ``error``
    calibration_rms: list[float] | None = None  # [plain, calibrated (cross-validated)] RMS error on calibration rows
    # an exact factor pair: the largest singular value it left out (float64 round-off of the product; 0.0 if
    # none): each output row is exact up to this times the input row's 2-norm. None for other forms.
    exact_bound: float | None = None
    attempts: list[Attempt] = field(default_factory=list)  # earlier forms of this chain that were undone
    # --budget-metric time: onnxruntime seconds per sample of the form the layer had and of this one, measured
    # alone on this machine at the model's shapes (``timing``); None otherwise
    seconds_before: float | None = None
    seconds_after: float | None = None

    def as_attempt(self) -> Attempt:
        """This record's form, as an attempt a later form of the chain replaced."""
        return Attempt(self.form, self.rank, self.params_after, self.macs_after, self.predicted_error, self.error,
                       self.reason)


@dataclass
class Unfolded:
    """A linear layer that is in no fold, and why (naming the op that ended its chain)."""

    layer: str
    reason: str
    ended_by: str | None = None  # op type of the node that ended the layer's chain, where one did


@dataclass
class Need:
    """What one undone truncation would have needed to pass: its own error's smallest atol at the rtol."""

    layers: list[str]
    rank: int | None
    required_atol: float
    rtol: float


@dataclass
class Truncation:
    """The outcome of --rank-budget / --max-error, in plain words and in numbers."""

    goal: str  # "--rank-budget 0.5" or "--max-error 0.1"
    planned: int  # layers (or chains) the allocation truncated
    kept: int  # truncations in the output
    undone: int  # truncations verification undid (their layers keep their exact form)
    met: bool  # every planned truncation is in the output
    summary: str  # what happened and, when not met, what it would take
    needs: list[Need] = field(default_factory=list)
    budget: float | None = None  # the rank budget used: the one given, or the one --rank-budget auto found


@dataclass
class ModelStats:
    op_counts: dict[str, int]
    params: int
    linear_macs: int  # multiply-accumulates of every Conv, Gemm and MatMul per sample (see macs.py)
    file_bytes: int | None = None
    macs_basis: str = "static shapes"  # the input shapes the MACs were counted at
    macs_uncounted: list[str] = field(default_factory=list)  # counted nodes whose size is unknown (not counted)
    layer_macs: dict[str, int] = field(default_factory=dict)  # MACs per sample of each counted node, by label
    seconds: float | None = None  # --budget-metric time: onnxruntime seconds per sample on this machine (``timing``)


@dataclass
class PruneTrial:
    """One share ``optimize --prune-share auto`` pruned and then optimized (with its own budget search)."""

    share: float
    passed: bool  # the optimized model passed verification against the original
    budget: float | None  # the rank budget its search found (None: no truncation goal, or it failed early)
    params: int | None  # the optimized model's weights and MACs (None when it failed early)
    linear_macs: int | None
    verdict: str  # its verification in a few words, or why it failed


@dataclass
class Pruning:
    """``optimize --prune-share``: the share of each convolution pair's channels removed, and the search."""

    share: float  # applied to each pair in the output (0: nothing pruned)
    pairs: int  # the pairs that share applies to
    search: list[dict] = field(default_factory=list)  # share auto: prune's share search (see PruneReport.search)
    tried: list[PruneTrial] = field(default_factory=list)  # share auto: each share optimized, cheapest passing kept
    removed: float = 0.0  # of all the pairs' channels together, the share removed (whole blocks)


@dataclass
class Report:
    before: ModelStats
    after: ModelStats
    folds: list[FoldRecord] = field(default_factory=list)
    verification: Verification | None = None
    notes: list[str] = field(default_factory=list)
    unfolded: list[Unfolded] = field(default_factory=list)
    truncation: Truncation | None = None  # with --rank-budget or --max-error
    pruning: Pruning | None = None  # with --prune-share

    @property
    def folded(self) -> list[FoldRecord]:
        return [f for f in self.folds if f.status == "folded"]

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION} | dataclasses.asdict(self)

    def to_json(self) -> str:
        return dumps(self.to_dict())


@dataclass
class Analysis:
    """What ``analyze`` found: the report (folds marked "foldable" or "skipped"), remarks on layers
    outside any chain, and with ``spectrum=True`` the truncation targets' spectra and the ALDS trade-off
    (weight budget, fraction kept, largest layer error); the verdict, one sentence each (what onnx-collapse
    can do for the model)."""

    report: Report
    remarks: list[tuple[str, str]]
    spectra: list[LayerSpectrum]
    tradeoff: list[tuple[float, float, float]]
    verdict: list[str] = field(default_factory=list)

    def to_dict(self, spectra: bool | None = None) -> dict:
        """The JSON payload of ``onnx-collapse analyze --json``: the report, remarks and verdict, and the
        spectra when ``spectra`` is True (None: when any were computed)."""
        payload = self.report.to_dict() | {"remarks": [{"node": n, "remark": r} for n, r in self.remarks],
                                           "verdict": self.verdict}
        if spectra or (spectra is None and self.spectra):
            payload["spectra"] = [{"layer": s.name, "dims": [s.n_in, s.n_out],
                                   "singular_values": s.singular_values.tolist()} for s in self.spectra]
        return payload

    def to_json(self, spectra: bool | None = None) -> str:
        return dumps(self.to_dict(spectra))


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _change(before: float, after: float) -> str:
    if before == after:
        return ""
    if before == 0:
        return f"{after - before:+g}"
    return f"{100.0 * (after - before) / before:+.1f}%"


ELLIPSIS = "..."
SEP = "  "  # between table columns
MIN_CUT = 8  # the narrowest a cut column gets when nothing else helps


def cut_end(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, its end replaced by an ellipsis when cut."""
    if len(text) <= width:
        return text
    return text[:width] if width <= len(ELLIPSIS) else text[: width - len(ELLIPSIS)].rstrip() + ELLIPSIS


def cut_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, keeping its start and end around an ellipsis."""
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS) + 1:
        return text[:width]
    tail = (width - len(ELLIPSIS)) // 2
    return text[: width - len(ELLIPSIS) - tail] + ELLIPSIS + text[len(text) - tail:]


def cut_chain(text: str, width: int) -> str:
    """A layer list ``a > b > c > d`` in at most ``width`` characters: ``a > ... > d``, then cut in the middle."""
    parts = text.split(" > ")
    if len(text) > width and len(parts) > 2:
        text = f"{parts[0]} > {ELLIPSIS} > {parts[-1]}"
    return cut_middle(text, width)


@dataclass(frozen=True)
class Column:
    """A table column: its title, alignment, how a cell is cut to fit, and when the column goes."""

    title: str
    left: bool = False
    cut: Callable[[str, int], str] | None = None  # None: never cut
    least: int = 0  # a cut (or wrapped) column keeps at least this width
    drop: int = 0  # when cutting is not enough, columns go in this order (1 first); 0: kept
    wrap: bool = False  # narrowed by wrapping its cells onto more lines, never by cutting them

    @property
    def narrows(self) -> bool:
        return self.cut is not None or self.wrap


def _fit(columns: list[Column], rows: list[list[str]], width: int | None) -> tuple[list[int], list[int]]:
    """The columns kept (indices) and their widths, so that a line is at most ``width`` where possible:
    cut the columns that allow it (rightmost first) down to their least width; if that is not enough,
    drop columns in their order and cut again; if still too wide, cut below the least widths."""
    natural = [max(len(c.title), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    kept = list(range(len(columns)))

    def excess(widths: list[int]) -> int:
        return 0 if width is None else sum(widths[i] for i in kept) + len(SEP) * (len(kept) - 1) - width

    def cut(floor: Callable[[Column], int]) -> list[int]:
        widths = list(natural)
        for i in reversed(kept):
            if columns[i].narrows and excess(widths) > 0:
                widths[i] = min(natural[i], max(floor(columns[i]), natural[i] - excess(widths)))
        return widths

    widths = cut(lambda c: c.least)
    for i in sorted((i for i in kept if columns[i].drop), key=lambda i: columns[i].drop):
        if excess(widths) <= 0:
            break
        kept.remove(i)
        widths = cut(lambda c: c.least)
    if excess(widths) > 0:
        widths = cut(lambda c: min(c.least, max(len(c.title), MIN_CUT)))
    return kept, widths


def _table(columns: list[Column], rows: list[list[str]], width: int | None = None) -> str:
    """Columns padded to their widest cell, under a title rule; cells cut and columns dropped to fit
    ``width`` (None: no limit), and as a last resort lines cut at ``width``."""
    kept, widths = _fit(columns, rows, width)
    lines = []
    for k, row in enumerate([[c.title for c in columns], *rows]):
        stacked = []  # per kept column, the cell's lines (more than one where a wrapped cell needs them)
        for i in kept:
            column, cell = columns[i], row[i]
            if column.wrap and len(cell) > widths[i]:
                stacked.append(textwrap.wrap(cell, widths[i], break_on_hyphens=False) or [""])
            else:
                stacked.append([column.cut(cell, widths[i]) if column.cut is not None else cell])
        for n in range(max(map(len, stacked))):
            cells = []
            for i, parts in zip(kept, stacked):
                cell = parts[n] if n < len(parts) else ""
                cells.append(cell.ljust(widths[i]) if columns[i].left else cell.rjust(widths[i]))
            lines.append(SEP.join(cells).rstrip())
        if k == 0:
            lines.append(SEP.join("-" * widths[i] for i in kept))
    return "\n".join(line if width is None else cut_end(line, width) for line in lines)


def _wrap(text: str, width: int | None, indent: str = "  ") -> str:
    """A line of prose wrapped at ``width`` (None: as it is), continuation lines indented."""
    if width is None or len(text) <= width:
        return text
    return textwrap.fill(text, width, subsequent_indent=indent, break_on_hyphens=False)


def render_stats(before: ModelStats, after: ModelStats, width: int | None = None) -> str:
    """Op counts, parameters, MACs and file size before and after."""
    columns = [Column("", left=True, cut=cut_middle, least=8), Column("before"), Column("after"),
               Column("change", drop=1)]
    rows = []
    for op in sorted(set(before.op_counts) | set(after.op_counts)):
        b, a = before.op_counts.get(op, 0), after.op_counts.get(op, 0)
        rows.append([op, str(b), str(a), "" if a == b else f"{a - b:+d}"])
    rows.append(["parameters", f"{before.params:,}", f"{after.params:,}", _change(before.params, after.params)])
    rows.append(
        ["MACs/sample", _macs_text(before), _macs_text(after),
         "" if before.macs_uncounted or after.macs_uncounted else _change(before.linear_macs, after.linear_macs)]
    )
    if before.seconds is not None and after.seconds is not None:
        rows.append(["ms/sample (measured)", f"{1e3 * before.seconds:.3g}", f"{1e3 * after.seconds:.3g}",
                     f"{before.seconds / after.seconds:.2f}x" if after.seconds > 0 else ""])
    if before.file_bytes is not None or after.file_bytes is not None:
        rows.append(["file size", _bytes(before.file_bytes), _bytes(after.file_bytes),
                     _change(before.file_bytes or 0, after.file_bytes or 0) if before.file_bytes else ""])
    return _table(columns, rows, width)


FOLD_COLUMNS = [
    Column("#", left=True), Column("layers", cut=cut_chain, least=14), Column("dims", drop=3),
    Column("slopes", drop=2), Column("status"), Column("form", drop=5), Column("params"),
    Column("MACs/sample", drop=1), Column("max abs err", drop=4), Column("reason", left=True, wrap=True, least=30),
]


def _macs_text(stats: ModelStats) -> str:
    """The MACs counted, with '+ ?' where some layers' sizes depend on the input and were not counted."""
    return f"{stats.linear_macs:,}" + (" + ?" if stats.macs_uncounted else "")


def render_folds(folds: list[FoldRecord], width: int | None = None, uncounted: Sequence[str] = ()) -> str:
    """One row per candidate chain: layers, dims, slopes, decision, form, savings, error, reason. A chain
    with a layer in ``uncounted`` (MACs not counted: sizes that depend on the input) shows '?' for MACs."""
    if not folds:
        return _wrap("no chains of layers found (see why for each layer below)", width)
    calibrated = any(f.calibrated for f in folds)
    rows = []
    for k, f in enumerate(folds, 1):
        slopes = ",".join(f"{lo:.3g}" if lo == hi else f"{lo:.3g}..{hi:.3g}" for lo, hi in f.slopes) or "-"
        form = (f.form or "-") + (f" r={f.rank}" if f.rank is not None else "")
        form += f" pred {f.predicted_error:.2g}" if f.predicted_error is not None else ""
        err = "-" if f.error is None else f"{f.error.max_abs:.2e}"
        rows.append([
            str(k), " > ".join(f.layers), "x".join(map(str, f.dims)), slopes, f.status, form,
            f"{f.params_before:,}>{f.params_after:,}" if f.form else f"{f.params_before:,}",
            "?" if set(f.layers) & set(uncounted) else
            f"{f.macs_before:,}>{f.macs_after:,}" if f.form else f"{f.macs_before:,}",
            err, f.reason,
        ])
        if calibrated:
            rows[-1][-1:-1] = ["-" if f.plain_error is None else f"{f.plain_error.max_abs:.2e}"]
    columns = FOLD_COLUMNS[:-1] + [Column("plain fold err", drop=4), FOLD_COLUMNS[-1]] if calibrated else FOLD_COLUMNS
    return _table(columns, rows, width)


def render_unfolded(unfolded: list[Unfolded], width: int | None = None) -> str:
    """The layers in no fold, each with why."""
    if not unfolded:
        return ""
    columns = [Column("layer", left=True, cut=cut_middle, least=14), Column("why", left=True, wrap=True, least=24)]
    return "layers not folded:\n" + _table(columns, [[u.layer, u.reason] for u in unfolded], width)


def render_verification(v: Verification | None, width: int | None = None) -> str:
    """The verdict, where the inputs came from, and per output the errors against the tolerance."""
    if v is None:
        return _wrap("verification: skipped (--no-verify); equivalence was NOT checked", width)
    if v.n_input_sets == 0:
        return _wrap(f"verification: not needed, {v.inputs}", width)
    head = f"verification: {'PASSED' if v.passed else 'FAILED'} on {v.n_input_sets} input set(s), {v.inputs}"
    top1 = any(o.agreement is not None for o in v.outputs)
    columns = [Column("output", left=True, cut=cut_middle, least=10), Column("max abs"), Column("max rel", drop=3),
               Column("mean abs", drop=2), Column("required atol", drop=5), Column("atol", drop=4),
               Column("rtol", drop=4), Column("top-1 agree", drop=6 if top1 else 1), Column("result")]
    labelled = any(o.accuracy is not None for o in v.outputs)
    if labelled:  # accuracy against the labels, before the result: kept the longest
        columns[-1:-1] = [Column("accuracy (original)", drop=7), Column("drop", drop=8)]
    rows = []
    for o in v.outputs:
        agree = "-" if o.agreement is None else f"{100 * o.agreement:.2f}%"
        if o.agreement_bound is not None:
            agree += f" (>= {100 * o.agreement_bound:.2f}%)"
        cells = [o.name, f"{o.max_abs:.3e}", f"{o.max_rel:.3e}", f"{o.mean_abs:.3e}",
                 f"{o.required_atol:.3e}", f"{o.atol:.0e}", f"{o.rtol:.0e}", agree]
        if labelled:
            cells += ["-", "-"] if o.accuracy is None else [
                f"{100 * o.accuracy:.2f}% ({100 * o.reference_accuracy:.2f}%)",
                f"{100 * o.accuracy_drop:.2f} pt" + ("" if o.accuracy_drop_bound is None else
                                                     f" (<= {100 * o.accuracy_drop_bound:.2f})")]
        rows.append([*cells, "ok" if o.passed else "FAIL"])
    why = [_wrap(f"why: {p}", width) for p in v.problems]
    return "\n".join([_wrap(head, width), _table(columns, rows, width), *why])


def _notes(notes: list[str], width: int | None) -> list[str]:
    return [_wrap(f"note: {n}", width) for n in notes]


def render(report: Report, width: int | None = None) -> str:
    """The human-readable report: before/after table, folds, notes, verification last; lines fit ``width``
    where it is given (the JSON report keeps every word)."""
    parts = [render_stats(report.before, report.after, width), "",
             render_folds(report.folds, width, report.before.macs_uncounted)]
    if report.unfolded:
        parts += ["", render_unfolded(report.unfolded, width)]
    if report.notes:
        parts += ["", *_notes(report.notes, width)]
    parts += ["", render_verification(report.verification, width)]
    if report.truncation is not None:  # last, where it is read: what became of the budget
        parts += ["", _wrap(report.truncation.summary, width)]
    return "\n".join(parts)


def render_spectra(spectra, tradeoff, width: int | None = None) -> str:
    """Per target layer: shape, sigma_1, numerical rank, spectral error at 25/50/75 % of the largest rank
    worth factoring; then the ALDS trade-off (largest layer error at each weight budget), as computed."""
    if not spectra:
        return _wrap("no low-rank targets (use --low-rank all to include every linear layer)", width)
    columns = [Column("layer", left=True, cut=cut_chain, least=14), Column("dims", drop=3),
               Column("sigma_1", drop=2), Column("rank", drop=4), Column("max factor rank", drop=1),
               Column("err @25%", drop=5), Column("err @50%"), Column("err @75%", drop=5)]
    rows = []
    for sp in spectra:
        s = sp.singular_values
        top = linalg.max_factor_rank(sp.n_in, sp.n_out)
        errors = linalg.spectral_errors(s)
        cells = [f"{errors[min(max(1, round(f * top)), s.size)]:.3f}" if top else "-" for f in (0.25, 0.5, 0.75)]
        rows.append([sp.name, f"{sp.n_in}x{sp.n_out}", f"{s[0]:.3g}" if s.size else "0",
                     str(linalg.numerical_rank(s, (sp.n_in, sp.n_out))), str(top), *cells])
    curve = [[f"{b:.0%}", f"{kept:.1%}", f"{err:.3f}"] for b, kept, err in tradeoff]
    curve_columns = [Column("weight budget", left=True), Column("kept"), Column("max layer error (ALDS)")]
    return _table(columns, rows, width) + "\n\n" + _table(curve_columns, curve, width)


def render_analysis(report: Report, width: int | None = None, verdict: list[str] | None = None) -> str:
    """What ``analyze`` prints before any spectra: chains, unfolded layers, then the verdict (what
    onnx-collapse can do for the model, one paragraph each)."""
    lines = [render_folds(report.folds, width, report.before.macs_uncounted)]
    if report.unfolded:
        lines += ["", render_unfolded(report.unfolded, width)]
    if report.notes:
        lines += ["", *_notes(report.notes, width)]
    lines += ["", "verdict:"]
    lines += [_wrap(f"- {v}", width) for v in verdict or []]
    return "\n".join(lines)


TRUNCATED_FORMS = ("truncated", "grouped")


def truncation_outcome(goal: str, folds: list[FoldRecord], verification: Verification | None,
                       real_inputs: bool, budget: float | None = None, over_budget: str | None = None) -> Truncation:
    """What became of the truncations ``goal`` (``--rank-budget 0.5``) planned, once verification decided:
    how many are in the output, how many were undone, and what it would take to keep them; ``over_budget``
    (the cheapest options' cost against the budget, in words) when even they exceed it."""
    kept = [f for f in folds if f.form in TRUNCATED_FORMS and f.status == "folded"]
    undone = [(f, f) for f in folds if f.form in TRUNCATED_FORMS and f.status == "reverted"]
    undone += [(f, a) for f in folds for a in f.attempts if a.form in TRUNCATED_FORMS]
    needs = [Need(list(f.layers), a.rank, a.error.required_atol, a.error.rtol)
             for f, a in undone if a.error is not None]
    planned = len(kept) + len(undone)
    met = planned > 0 and not undone and over_budget is None
    if planned == 0:
        summary = f"{goal}: no layer was truncated (see the notes)"
    elif verification is None:
        summary = (f"{goal}: {planned} layer(s) truncated and NOT verified (--no-verify); truncation changes "
                   "the function, so check the output on your data (onnx-collapse verify IN OUT --inputs data.npz)")
    elif not undone and over_budget is not None:
        summary = (f"{goal} NOT met: every layer is at its cheapest option and the model still takes {over_budget}; "
                   f"all {planned} planned truncation(s) are in the output, verified on {verification.inputs}")
    elif not undone:
        summary = f"{goal} met: all {planned} planned truncation(s) are in the output, verified on {verification.inputs}"
    else:
        data = "your data (--inputs)" if real_inputs else "random inputs"
        summary = (f"{goal} NOT met: {len(undone)} of {planned} planned truncation(s) were undone because "
                   f"their error on {data} exceeds the tolerance, so those layers keep their exact form and "
                   "the output is larger than the budget allows.")
        if needs:
            worst = max(needs, key=lambda n: n.required_atol)
            each = "" if len(needs) == 1 else " (each layer's need is in the JSON report: truncation.needs)"
            allow = (f"accept that error: {' > '.join(worst.layers)} needs --atol {worst.required_atol:.2g} "
                     f"at --rtol {worst.rtol:.0e}{each}")
        else:
            allow = "accept more error (--atol, --rtol)"
        if real_inputs:
            summary += f" To keep them: {allow}, or give a larger --rank-budget."
        else:
            summary += (" Random inputs are a strict test; to keep them, verify on real data with a task metric "
                        f"(--inputs data.npz --metric top1 for a classifier), or {allow}.")
    return Truncation(goal, planned, len(kept), len(undone), met, summary, needs, budget)
