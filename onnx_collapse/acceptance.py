"""Which fold plans to keep: pure decisions over plans and a "does the model pass with these" callable.

A plan whose own measured error fails the tolerance is never kept (its exact fallback is, if that
passes). The others are kept unless the whole model fails with them; then the smallest prefix of the
worst plans whose revert makes the model pass is found by bisection, so a model with N
plans needs O(log N) whole-model runs rather than one per reverted plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .plans import FoldPlan
from .report import ErrorStats


@dataclass
class Revert:
    """A decision to take ``plan`` out: ``replacement`` (its exact fallback) or None (the original nodes)."""

    plan: FoldPlan
    replacement: FoldPlan | None
    reason: str


def badness(plan: FoldPlan) -> float:
    """How far the plan's own error is from its tolerance: required atol / allowed atol (0 if unmeasured)."""
    err = plan.outcome.error
    return 0.0 if err is None else err.required_atol / max(err.atol, np.finfo(np.float64).tiny)


def own_error_passes(plan: FoldPlan) -> bool:
    """Whether the plan's own measured error is within the tolerance (an unmeasured plan counts as passing)."""
    return plan.outcome.error is None or plan.outcome.error.passed


def describe_error(err: ErrorStats) -> str:
    """The measured error and the tolerance it is judged by, for a report reason."""
    return (f"its own max abs error is {err.max_abs:.2e} (needs atol {err.required_atol:.1e}; "
            f"tolerance atol {err.atol:.1e}, rtol {err.rtol:.1e})")


def without_local_failures(plans: Sequence[FoldPlan], exempt_main_graph: bool = False) -> tuple[list[FoldPlan], list[Revert]]:
    """``plans`` with every plan whose own error fails replaced by its fallback if that passes, else dropped.

    With ``exempt_main_graph`` (the whole model is judged by a metric other than allclose, such as top-1
    agreement, which every run applies to every main-graph fold), only subgraph plans, which a run may
    never reach, are held to their own error.
    """
    kept, reverts = [], []
    for plan in plans:
        if own_error_passes(plan) or (exempt_main_graph and not plan.graph):
            kept.append(plan)
            continue
        fallback = plan.fallback if plan.fallback is not None and own_error_passes(plan.fallback) else None
        reason = f"{describe_error(plan.outcome.error)}, which fails the tolerance"
        reverts.append(Revert(plan, fallback, reason))
        if fallback is not None:
            kept.append(fallback)
    return kept, reverts


def smallest_passing_prefix(n: int, passes: Callable[[int], bool]) -> int | None:
    """The smallest k in 1..n with ``passes(k)``, assuming ``passes(0)`` is False and that passing is
    monotone in k; None if ``passes(n)`` is False. Bisection: 1 + ceil(log2 n) calls.

    Only values that ``passes`` actually returned True for are ever answered.
    """
    if n < 1 or not passes(n):
        return None
    failing, passing = 0, n
    while passing - failing > 1:
        mid = (failing + passing) // 2
        if passes(mid):
            passing = mid
        else:
            failing = mid
    return passing


def reverted_prefix(ordered: Sequence[FoldPlan], k: int) -> list[FoldPlan]:
    """``ordered`` with its first ``k`` plans replaced by their fallbacks (or dropped when they have none)."""
    return [p.fallback for p in ordered[:k] if p.fallback is not None] + list(ordered[k:])


def _prefix_check(ordered: list[FoldPlan], passes: Callable[[list[FoldPlan]], bool]) -> Callable[[int], bool]:
    """Whether the model passes with the first k plans of ``ordered`` reverted, as a function of k."""
    return lambda k: passes(reverted_prefix(ordered, k))


def accept(plans: Sequence[FoldPlan], passes: Callable[[list[FoldPlan]], bool]) -> tuple[list[FoldPlan], list[Revert]]:
    """The plans to keep when the model fails with all of ``plans`` (the caller has checked that), and the
    reverts that got there.

    Worst plans (by ``badness``) are reverted first, as a prefix found by ``smallest_passing_prefix``.
    If reverting every plan still fails, the fallbacks brought in are tried the same way, and so on;
    when nothing is left the original model remains (the caller runs it).
    """
    accepted, reverts = list(plans), []
    while accepted:
        ordered = sorted(accepted, key=badness, reverse=True)
        k = smallest_passing_prefix(len(ordered), _prefix_check(ordered, passes))
        cut = len(ordered) if k is None else k
        why = (f"the model fails verification with the {cut} worst fold(s) kept and passes without them"
               if k is not None else "the model fails verification even with every fold reverted to its exact form")
        reverts += [Revert(p, p.fallback, f"{why}; {describe_error(p.outcome.error)}" if p.outcome.error else why)
                    for p in ordered[:cut]]
        accepted = reverted_prefix(ordered, cut)
        if k is not None:
            break
    return accepted, reverts
