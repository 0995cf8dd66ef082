"""Applying fold plans to a model: the rewritten graph computes what the plans say, whatever subset is applied."""

import numpy as np
import onnx

from onnx_collapse.rewrite import PlanApplier, apply_plans
from tests.builders import ActSpec, ChainSpec, LayerSpec, build, fold_plans, run_model


def test_one_imported_model_serves_candidate_after_candidate():
    """Verification applies many plan sets to one import; each result equals a fresh rewrite."""
    spec = ChainSpec(8, [LayerSpec(16), LayerSpec(16), LayerSpec(8), LayerSpec(8), LayerSpec(4)],
                     [ActSpec(), ActSpec(slope=0.5), ActSpec(), ActSpec()])
    model = build(spec)
    plans = fold_plans(model)
    assert len(plans) == 2
    applier = PlanApplier(model)
    for subset in (plans, plans[:1], [], plans[1:], plans):
        assert applier.apply(subset).SerializeToString() == apply_plans(model, subset).SerializeToString()


def test_applied_plans_give_fewer_nodes_computing_the_same_outputs():
    model = build(ChainSpec(8, [LayerSpec(16), LayerSpec(16), LayerSpec(4)], [ActSpec(), ActSpec()]))
    plans = fold_plans(model)
    out = apply_plans(model, plans)
    onnx.checker.check_model(out)
    assert len(out.graph.node) < len(model.graph.node)
    assert sum(t.ByteSize() for t in out.graph.initializer) < sum(t.ByteSize() for t in model.graph.initializer)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(out, x=x)[0], run_model(model, x=x)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(run_model(apply_plans(model, []), x=x)[0], run_model(model, x=x)[0])
