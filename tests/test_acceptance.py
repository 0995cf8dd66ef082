"""Which folds are kept (the pure logic): never one whose own error fails; reverts by bisection in O(log N)
checks. The runs themselves: test_revert.py."""

from types import SimpleNamespace

import numpy as np
import pytest

from onnx_collapse import acceptance
from onnx_collapse.report import ErrorStats


def _plan(required: float, fallback=None, atol: float = 1.0, graph=()):
    err = ErrorStats("y", required, 0.0, 0.0, required, atol, 0.0, required <= atol)
    return SimpleNamespace(outcome=SimpleNamespace(error=err), fallback=fallback, graph=graph)


@pytest.mark.parametrize("n,bad", [(1, 1), (7, 0), (7, 3), (256, 0), (256, 5), (256, 256)])
def test_smallest_passing_prefix_needs_logarithmically_many_checks(n, bad):
    calls = []

    def passes(k):
        calls.append(k)
        return k >= bad

    found = acceptance.smallest_passing_prefix(n, passes)
    assert found == max(bad, 1)
    assert len(calls) <= np.ceil(np.log2(n)) + 1


def test_smallest_passing_prefix_is_none_when_reverting_all_fails():
    assert acceptance.smallest_passing_prefix(10, lambda k: False) is None


def test_accept_reverts_the_worst_plans_and_keeps_the_rest():
    plans = [_plan(r) for r in (0.1, 0.9, 0.5, 0.3, 0.7)]  # each passes alone; the model needs sum <= 1
    kept, reverts = acceptance.accept(plans, lambda chosen: sum(p.outcome.error.max_abs for p in chosen) <= 1.0)
    assert sorted(p.outcome.error.max_abs for p in kept) == [0.1, 0.3, 0.5]
    assert [r.plan.outcome.error.max_abs for r in reverts] == [0.9, 0.7]
    assert all("fails verification with the 2 worst" in r.reason and "max abs error" in r.reason for r in reverts)


def test_accept_falls_back_to_exact_folds_then_to_the_original():
    exact = _plan(0.2)
    truncated = _plan(0.6, fallback=exact)
    plain = _plan(0.5)
    kept, reverts = acceptance.accept([truncated, plain], lambda chosen: not chosen)
    assert kept == []
    assert [(r.plan, r.replacement) for r in reverts] == [(truncated, exact), (plain, None), (exact, None)]


def test_local_failures_fall_back_to_a_passing_exact_fold_or_to_the_original():
    good_exact, bad_exact = _plan(0.5), _plan(2.0)
    plans = [_plan(3.0, fallback=good_exact), _plan(3.0, fallback=bad_exact), _plan(4.0), _plan(0.5)]
    kept, reverts = acceptance.without_local_failures(plans)
    assert kept == [good_exact, plans[3]]
    assert [r.replacement for r in reverts] == [good_exact, None, None]
    assert all("3.00e+00" in r.reason or "4.00e+00" in r.reason for r in reverts)
    assert all("fails the tolerance" in r.reason for r in reverts)


def test_with_a_whole_model_metric_only_subgraph_folds_are_held_to_their_own_error():
    main, sub = _plan(3.0), _plan(3.0, graph=((0, "then_branch", 0),))
    kept, reverts = acceptance.without_local_failures([main, sub], exempt_main_graph=True)
    assert kept == [main] and [r.plan for r in reverts] == [sub]
