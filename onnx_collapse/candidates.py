"""One list of candidates: every fold or truncation the passes consider, from when it is found to the report.

A **candidate** is a chain of layers (or one layer, as a truncation target) with what is known about it
(``Chain``: labels, dims, slopes, parameters and MACs before). Its **forms** are the rewrites written for it
(``plans.FoldPlan``), in the order the passes made them: the exact fold, a calibrated fit of it, a truncation.
The last one in force is applied; the ones below it are its fallbacks, which verification falls back to when
it undoes a form. Each form carries its own ``Outcome`` (what it stores, what it measured). The report's
``FoldRecord`` is built from a candidate once, at the end (``record``); nothing else writes records.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .graph import GraphPath
from .linalg import Factored
from .report import Attempt, ErrorStats, FoldRecord

if TYPE_CHECKING:
    from .emit import Emission
    from .plans import FoldPlan, Segment


@dataclass
class Outcome:
    """What one form of a candidate stores and measured: the report row's form columns and reason."""

    form: str | None = None  # "dense", "factor", "truncated", "grouped"; None: no form taken
    rank: int | None = None
    params_after: int = 0
    macs_after: int = 0
    reason: str = ""
    predicted_error: float | None = None  # truncation: relative error bound of the kept rank
    error: ErrorStats | None = None  # measured at the chain's output in onnxruntime
    calibrated: bool = False
    calibration_rms: list[float] | None = None
    exact_bound: float | None = None  # an exact factor pair's largest left-out singular value
    attempts: list[Attempt] = field(default_factory=list)  # forms below this one that verification undid
    seconds_before: float | None = None  # --budget-metric time: the layer's form before truncation, per sample
    seconds_after: float | None = None  # and this form's (measured or interpolated, ``timing``)

    def as_attempt(self) -> Attempt:
        return Attempt(self.form, self.rank, self.params_after, self.macs_after, self.predicted_error, self.error,
                       self.reason)

    def derived(self, **changes) -> Outcome:
        """A new form's outcome starting from this one (a truncation keeps what the fold below it measured
        about calibration; its attempts are its own)."""
        return replace(self, attempts=list(self.attempts), **changes)


@dataclass(frozen=True)
class Chain:
    """What a candidate is: its layers' and activations' labels, feature sizes along it, the activations'
    [min, max] slopes, and the stored parameters and MACs per sample of the nodes it replaces."""

    layers: list[str]
    activations: list[str]
    dims: list[int]
    slopes: list[list[float]]
    params_before: int
    macs_before: int


@dataclass(eq=False)
class Candidate:
    """One fold or truncation target of a graph (see the module docstring).

    ``status`` says what became of a candidate without a form in force: "skipped" (no form was taken;
    ``outcome`` says why and which form was best), "reverted" (verification undid every form; ``outcome`` is
    the last one undone), or "target" (a single layer no pass has written a form for: not in the report).
    ``exact`` and ``emit`` are a single-layer target's map and how its forms are written (a fold's come from
    its forms).
    """

    chain: Chain
    graph: GraphPath
    segment: Segment
    status: str = "skipped"
    outcome: Outcome = field(default_factory=Outcome)
    forms: list[FoldPlan] = field(default_factory=list)
    applied: FoldPlan | None = None  # the form in force (the last pushed, until verification undoes it)
    exact: Factored | None = None
    emit: Emission | None = None

    def push(self, plan: FoldPlan) -> FoldPlan:
        """Make ``plan`` the form in force; the one it replaces becomes its fallback."""
        plan.candidate, plan.fallback = self, self.applied
        self.forms.append(plan)
        self.applied = plan
        return plan

    @property
    def shown(self) -> Outcome:
        """The outcome the report shows: the form in force, else what ``outcome`` says."""
        return self.applied.outcome if self.applied is not None else self.outcome

    @property
    def reported(self) -> bool:
        return self.applied is not None or self.status != "target"

    def target_map(self) -> Factored | None:
        """The float64 map a truncation of this candidate approximates (its form in force, else its own)."""
        return self.applied.exact if self.applied is not None else self.exact

    def target_emit(self) -> Emission | None:
        return self.applied.emit if self.applied is not None else self.emit

    def undo(self, plan: FoldPlan, replacement: FoldPlan | None, reason: str) -> None:
        """Verification took ``plan`` out for ``reason``: ``replacement`` (a form below it) is in force instead,
        with the undone form among its attempts, or no form is (the original nodes stay)."""
        undone = plan.outcome
        undone.reason = reason
        if replacement is None:
            self.applied, self.status, self.outcome = None, "reverted", undone
            return
        self.applied = replacement
        kept = replacement.outcome
        kept.attempts = [*undone.attempts, undone.as_attempt()]
        form = f"{undone.form} to rank {undone.rank}" if undone.rank is not None else undone.form
        kept.reason = "; ".join(filter(None, [kept.reason, f"{form} undone: {reason}; kept the exact fold instead"]))

    def plain_error(self, shown: Outcome) -> ErrorStats | None:
        """A calibrated form's plain fold (the first uncalibrated form below it), as verification measured it."""
        if not shown.calibrated:
            return None
        top = next((k for k, p in enumerate(self.forms) if p.outcome is shown), len(self.forms))
        return next((p.outcome.error for p in reversed(self.forms[:top]) if not p.outcome.calibrated), None)

    def record(self, proposed: bool = False) -> FoldRecord:
        """The report's row: ``proposed`` for ``analyze`` (a form in force is "foldable", not "folded")."""
        out, chain = self.shown, self.chain
        status = ("foldable" if proposed else "folded") if self.applied is not None else self.status
        return FoldRecord(
            layers=list(chain.layers), activations=list(chain.activations), dims=list(chain.dims),
            slopes=[list(s) for s in chain.slopes], status=status, reason=out.reason, form=out.form, rank=out.rank,
            params_before=chain.params_before, params_after=out.params_after, macs_before=chain.macs_before,
            macs_after=out.macs_after, predicted_error=out.predicted_error, error=out.error,
            calibrated=out.calibrated, plain_error=self.plain_error(out), calibration_rms=out.calibration_rms,
            exact_bound=out.exact_bound, attempts=list(out.attempts), seconds_before=out.seconds_before,
            seconds_after=out.seconds_after)

    def release(self) -> None:
        """Drop every form's new tensors and exact maps (see ``FoldPlan.release``) and the target's own map."""
        for plan in self.forms:
            plan.release()
        self.exact = None


def applied(candidates: list[Candidate]) -> list[FoldPlan]:
    """The forms in force, in candidate order."""
    return [c.applied for c in candidates if c.applied is not None]


def records(candidates: list[Candidate], proposed: bool = False) -> list[FoldRecord]:
    """The report's rows, one per reported candidate, in the order the passes found them."""
    return [c.record(proposed) for c in candidates if c.reported]
