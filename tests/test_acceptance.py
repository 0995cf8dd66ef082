"""Which folds are kept: never one whose own error fails; reverts by bisection in O(log N) whole-model runs."""

from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from revert_scaling import summed_chains

from onnx_collapse import acceptance, optimize, pipeline
from onnx_collapse.report import ErrorStats
from tests.builders import mlp
from tests.test_subgraphs import _if_model


def _plan(required: float, fallback=None, atol: float = 1.0, graph=()):
    err = ErrorStats("y", required, 0.0, 0.0, required, atol, 0.0, required <= atol)
    return SimpleNamespace(record=SimpleNamespace(error=err), fallback=fallback, graph=graph)


def _run(model, feed):
    return ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]


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
    kept, reverts = acceptance.accept(plans, lambda chosen: sum(p.record.error.max_abs for p in chosen) <= 1.0)
    assert sorted(p.record.error.max_abs for p in kept) == [0.1, 0.3, 0.5]
    assert [r.plan.record.error.max_abs for r in reverts] == [0.9, 0.7]
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


def test_fold_failing_its_own_check_inside_an_untaken_if_branch_is_reverted():
    model = _if_model()
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    slopes = next(t for t in then.initializer if t.name == "t_s")
    slopes.CopyFrom(numpy_helper.from_array(np.full(16, 0.97, np.float32), "t_s"))
    feed = {"cond": np.array(False), "x": np.ones((2, 8), np.float32)}  # the else branch: the fold is never run
    out, report = optimize(model, inputs=feed)
    (record,) = report.folds
    assert record.status == "reverted" and not record.error.passed
    assert f"{record.error.max_abs:.2e}" in record.reason and "tolerance" in record.reason
    assert report.verification.passed
    taken = {"cond": np.array(True), "x": np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)}
    np.testing.assert_array_equal(_run(out, taken), _run(model, taken))


def test_main_graph_fold_failing_its_own_check_is_reverted_even_if_the_model_passes():
    model = mlp(slope=0.97)
    scale = numpy_helper.from_array(np.array(1e-4, np.float32), "tiny")
    model.graph.initializer.append(scale)
    # an overridable weight (also a graph input), so the fold cannot absorb the Mul that hides its error
    model.graph.input.append(helper.make_tensor_value_info("tiny", TensorProto.FLOAT, []))
    model.graph.node.append(helper.make_node("Mul", ["l1", "tiny"], ["scaled"]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [None, 4]))
    out, report = optimize(model)
    (record,) = report.folds
    assert record.status == "reverted" and "fails the tolerance" in record.reason
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]


def _count_model_runs(monkeypatch) -> list[str]:
    calls = []
    real = pipeline.run

    def counting(source, feeds, what):
        calls.append(what)
        return real(source, feeds, what)

    monkeypatch.setattr(pipeline, "run", counting)
    return calls


@pytest.mark.slow
def test_whole_model_runs_grow_logarithmically_with_the_number_of_folds(monkeypatch):
    runs = {}
    for n in (8, 64):
        calls = _count_model_runs(monkeypatch)
        model, tolerance = summed_chains(n)
        out, report = optimize(model, atol=tolerance, rtol=0.0)
        assert report.verification.passed
        reverted = [r for r in report.folds if r.status == "reverted"]
        assert reverted and all("fails verification" in r.reason for r in reverted)
        assert all(r.error.passed for r in report.folds)  # every fold passes its own check
        runs[n] = calls.count("optimized model")
    assert runs[64] <= runs[8] + np.log2(64 / 8) + 1  # 8x the folds: a few more runs, not 8x as many
    assert runs[64] <= np.log2(64) + 3
