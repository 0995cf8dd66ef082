"""Report data (what was found, folded, reverted, measured) and its table / JSON renderings."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from . import linalg

# Version of the JSON reports (optimize/analyze/verify --json), described by schemas/report.schema.json:
# the minor number grows when fields are added, the major one when a field changes or goes.
SCHEMA_VERSION = "1.0"


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


@dataclass
class Verification:
    """Whole-model comparison in onnxruntime."""

    passed: bool
    n_input_sets: int
    inputs: str  # where the inputs came from: "random (seed 0)" or a file name
    outputs: list[ErrorStats] = field(default_factory=list)


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


@dataclass
class Unfolded:
    """A linear layer that is in no fold, and why (naming the op that ended its chain)."""

    layer: str
    reason: str


@dataclass
class ModelStats:
    op_counts: dict[str, int]
    params: int
    linear_macs: int  # multiply-accumulates of recognised linear layers, per input row
    file_bytes: int | None = None


@dataclass
class Report:
    before: ModelStats
    after: ModelStats
    folds: list[FoldRecord] = field(default_factory=list)
    verification: Verification | None = None
    notes: list[str] = field(default_factory=list)
    unfolded: list[Unfolded] = field(default_factory=list)

    @property
    def folded(self) -> list[FoldRecord]:
        return [f for f in self.folds if f.status == "folded"]

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION} | dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


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


def _table(rows: list[list[str]], text_last: bool = False) -> str:
    """Columns padded to their widest cell: the first (and with ``text_last`` the last) left-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    left = {0, len(widths) - 1} if text_last else {0}
    lines = []
    for k, row in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_stats(before: ModelStats, after: ModelStats) -> str:
    rows = [["", "before", "after", "change"]]
    for op in sorted(set(before.op_counts) | set(after.op_counts)):
        b, a = before.op_counts.get(op, 0), after.op_counts.get(op, 0)
        rows.append([op, str(b), str(a), "" if a == b else f"{a - b:+d}"])
    rows.append(["parameters", f"{before.params:,}", f"{after.params:,}", _change(before.params, after.params)])
    rows.append(
        ["linear MACs/row", f"{before.linear_macs:,}", f"{after.linear_macs:,}",
         _change(before.linear_macs, after.linear_macs)]
    )
    if before.file_bytes is not None or after.file_bytes is not None:
        rows.append(["file size", _bytes(before.file_bytes), _bytes(after.file_bytes),
                     _change(before.file_bytes or 0, after.file_bytes or 0) if before.file_bytes else ""])
    return _table(rows)


def render_folds(folds: list[FoldRecord]) -> str:
    if not folds:
        return "no chains of layers found (see why for each layer below)"
    calibrated = any(f.calibrated for f in folds)
    rows = [["#", "layers", "dims", "slopes", "status", "form", "params", "MACs/row", "max abs err", "reason"]]
    if calibrated:
        rows[0][-1:-1] = ["plain fold err"]
    for k, f in enumerate(folds, 1):
        slopes = ",".join(f"{lo:.3g}" if lo == hi else f"{lo:.3g}..{hi:.3g}" for lo, hi in f.slopes) or "-"
        form = (f.form or "-") + (f" r={f.rank}" if f.rank is not None else "")
        form += f" pred {f.predicted_error:.2g}" if f.predicted_error is not None else ""
        err = "-" if f.error is None else f"{f.error.max_abs:.2e}"
        rows.append([
            str(k), " > ".join(f.layers), "x".join(map(str, f.dims)), slopes, f.status, form,
            f"{f.params_before:,}>{f.params_after:,}" if f.form else f"{f.params_before:,}",
            f"{f.macs_before:,}>{f.macs_after:,}" if f.form else f"{f.macs_before:,}",
            err, f.reason,
        ])
        if calibrated:
            rows[-1][-1:-1] = ["-" if f.plain_error is None else f"{f.plain_error.max_abs:.2e}"]
    return _table(rows, text_last=True)


def render_unfolded(unfolded: list[Unfolded]) -> str:
    """The layers in no fold, each with why."""
    if not unfolded:
        return ""
    return "layers not folded:\n" + _table([["layer", "why"]] + [[u.layer, u.reason] for u in unfolded], text_last=True)


def render_verification(v: Verification | None) -> str:
    if v is None:
        return "verification: skipped (--no-verify); equivalence was NOT checked"
    if v.n_input_sets == 0:
        return f"verification: not needed, {v.inputs}"
    head = f"verification: {'PASSED' if v.passed else 'FAILED'} on {v.n_input_sets} input set(s), {v.inputs}"
    rows = [["output", "max abs", "max rel", "mean abs", "required atol", "atol", "rtol", "top-1 agree", "result"]]
    for o in v.outputs:
        agree = "-" if o.agreement is None else f"{100 * o.agreement:.2f}%"
        rows.append([o.name, f"{o.max_abs:.3e}", f"{o.max_rel:.3e}", f"{o.mean_abs:.3e}",
                     f"{o.required_atol:.3e}", f"{o.atol:.0e}", f"{o.rtol:.0e}", agree, "ok" if o.passed else "FAIL"])
    return head + "\n" + _table(rows)


def render(report: Report) -> str:
    """The human-readable report: before/after table, folds, notes, verification last."""
    parts = [render_stats(report.before, report.after), "", render_folds(report.folds)]
    if report.unfolded:
        parts += ["", render_unfolded(report.unfolded)]
    if report.notes:
        parts += [""] + [f"note: {n}" for n in report.notes]
    parts += ["", render_verification(report.verification)]
    return "\n".join(parts)


def render_spectra(spectra, tradeoff) -> str:
    """Per target layer: shape, sigma_1, numerical rank, spectral error at 25/50/75 % of the largest rank
    worth factoring; then the ALDS trade-off (largest layer error at each weight budget), as computed."""
    if not spectra:
        return "no low-rank targets (use --low-rank all to include every linear layer)"
    rows = [["layer", "dims", "sigma_1", "rank", "max factor rank", "err @25%", "err @50%", "err @75%"]]
    for sp in spectra:
        s = sp.singular_values
        top = linalg.max_factor_rank(sp.n_in, sp.n_out)
        errors = linalg.spectral_errors(s)
        cells = [f"{errors[min(max(1, round(f * top)), s.size)]:.3f}" if top else "-" for f in (0.25, 0.5, 0.75)]
        rows.append([sp.name, f"{sp.n_in}x{sp.n_out}", f"{s[0]:.3g}" if s.size else "0",
                     str(linalg.numerical_rank(s, (sp.n_in, sp.n_out))), str(top), *cells])
    curve = [["weight budget", "kept", "max layer error (ALDS)"]]
    curve += [[f"{b:.0%}", f"{kept:.1%}", f"{err:.3f}"] for b, kept, err in tradeoff]
    return _table(rows) + "\n\n" + _table(curve)
