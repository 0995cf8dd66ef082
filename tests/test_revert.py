"""Verification with per-fold revert (onnx_collapse.revert): folds failing their own check are reverted,
the rest by bisection in O(log N) whole-model runs; parked new tensors rewrite to the same model."""


import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from revert_scaling import summed_chains

import onnx_collapse as oc
from onnx_collapse import optimize, revert
from onnx_collapse.candidates import applied
from onnx_collapse.io import ModelSource
from onnx_collapse.options import Options
from onnx_collapse.pipeline import run_passes
from onnx_collapse.revert import park
from onnx_collapse.rewrite import STUB_BYTES, apply_plans
from tests.builders import mlp, save_external
from tests.test_subgraphs import _if_model


def _run(model, feed):
    return ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]


def _big_mlp() -> onnx.ModelProto:
    """A slope-1 chain whose folded weight (700 x 700 float32) is over STUB_BYTES."""
    model = mlp(n_in=700, hidden=800, n_out=700, slope=1.0)
    assert 700 * 700 * 4 >= STUB_BYTES
    return model


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
    real = revert.run

    def counting(source, feeds, what):
        calls.append(what)
        return real(source, feeds, what)

    monkeypatch.setattr(revert, "run", counting)
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


def test_freeing_memory_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(revert.sys, "platform", "win32")
    revert.return_free_memory()  # no ctypes lookup of a C library there


def test_a_failed_verification_returns_a_model_whose_data_can_be_read(tmp_path, monkeypatch):
    """Nothing is written when verification fails; the returned model must not point into the staging
    folder, which is gone by then."""
    from dataclasses import replace

    from onnx.external_data_helper import load_external_data_for_model

    real = revert.judge
    monkeypatch.setattr(revert, "judge", lambda *a, **k: replace(real(*a, **k), passed=False))
    src = tmp_path / "in.onnx"
    save_external(_big_mlp(), src)
    out, report = oc.optimize(src, output=tmp_path / "out.onnx")
    assert not report.verification.passed and not (tmp_path / "out.onnx").exists()
    load_external_data_for_model(out, str(tmp_path))  # raises if a location does not exist
    onnx.checker.check_model(out)


def test_parked_plans_rewrite_to_the_same_model_as_plans_in_memory(tmp_path):
    model = _big_mlp()
    contexts = run_passes(ModelSource(model), Options())
    plans = [p for ctx in contexts for p in applied(ctx.candidates)]
    assert any(len(t.raw_data) >= STUB_BYTES for p in plans for t in p.initializers)
    in_memory = apply_plans(model, plans)
    park(plans, tmp_path / "parked")
    assert all(len(t.raw_data) < STUB_BYTES for p in plans for t in p.initializers)  # data now in the file
    parked = apply_plans(model, plans, parked=tmp_path / "parked")
    assert parked.SerializeToString(deterministic=True) == in_memory.SerializeToString(deterministic=True)


def test_a_full_disk_while_parking_is_a_one_line_error_and_leaves_nothing(tmp_path, monkeypatch):
    from onnx_collapse.errors import CollapseError

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(revert, "data_backed", full)
    src = tmp_path / "in.onnx"
    save_external(_big_mlp(), src)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CollapseError, match="No space left on device") as caught:
        oc.optimize(src, output=tmp_path / "out.onnx")
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_each_folds_own_error_is_measured_at_its_chains_output(tmp_path):
    from onnx_collapse.runner import BatchCache, capture_batches

    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 2] x) => (float[2, 2] y) <float[2, 2] a = {1.0, 2.0, 3.0, 4.0}, float[2, 2] b = {0.5, 0.0, 0.0, 2.0}> {
        h = MatMul(x, a)
        y = MatMul(h, b)
    }
    """)
    product = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32) @ np.array([[0.5, 0.0], [0.0, 2.0]], np.float32)
    exact = numpy_helper.from_array(product, "ab")
    wrong = numpy_helper.from_array(product * 1.1, "ab_wrong")
    node, wrong_node = helper.make_node("MatMul", ["x", "ab"], ["y"]), helper.make_node("MatMul", ["x", "ab_wrong"], ["y"])
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((2, 2)).astype(np.float32)} for _ in range(2)]
    cache = BatchCache(tmp_path)
    capture_batches(ModelSource(model), ["x", "y"], {"x": TensorProto.FLOAT, "y": TensorProto.FLOAT}, feeds, cache)
    errors = [revert.local_error(model.opset_import, model.ir_version, ("x", "y", [n], [w], TensorProto.FLOAT),
                                 cache, len(feeds), None, None, tmp_path)
              for n, w in ((node, exact), (wrong_node, wrong))]
    assert [e.name for e in errors] == ["y", "y"]
    assert errors[0].passed and errors[0].max_abs < 1e-6
    assert not errors[1].passed and errors[1].max_abs > 1e-2
    # the wrong fold's error is that of both input sets: the larger one of the two
    worst = max(float(np.abs(f["x"] @ product * 0.1).max()) for f in feeds)
    assert errors[1].max_abs == pytest.approx(worst, rel=1e-5)


def test_a_folds_own_error_holds_one_input_sets_values_at_a_time(tmp_path, monkeypatch):
    """A fold near the input writes large activations on every verification row: compared as they come."""
    import gc
    import weakref

    from onnx_collapse.runner import BatchCache, capture_batches, session

    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2] x) => (float[N, 2] y) <float[2, 2] a = {1.0, 2.0, 3.0, 4.0}> { y = MatMul(x, a) }
    """)
    feeds = [{"x": np.full((3, 2), float(k), np.float32)} for k in range(6)]

    class Watched(BatchCache):
        alive: list[weakref.ref] = []

        def get(self, name, batch):
            gc.collect()
            # the set before (its reference and folded values) may still be the comparison's loop variables
            # while the next one is read (its reference first): three values at most, never all the sets'
            assert sum(r() is not None for r in self.alive) <= 3, "earlier sets' values are still held"
            value = super().get(name, batch)
            if name == "y":
                self.alive.append(weakref.ref(value))
            return value

    class WatchedSession:  # the folded chain's outputs, watched the same way
        def __init__(self, inner):
            self.inner = inner

        def run(self, names, feed):
            out = self.inner.run(names, feed)
            Watched.alive.append(weakref.ref(out[0]))
            return out

    cache = Watched(tmp_path / "c")
    capture_batches(ModelSource(model), ["x", "y"], {"x": TensorProto.FLOAT, "y": TensorProto.FLOAT}, feeds, cache)
    node = helper.make_node("MatMul", ["x", "a"], ["y"])
    monkeypatch.setattr(revert, "session", lambda *a, **k: WatchedSession(session(*a, **k)))
    error = revert.local_error(model.opset_import, model.ir_version,
                               ("x", "y", [node], [numpy_helper.from_array(np.array([[1, 2], [3, 4]], np.float32), "a")],
                                TensorProto.FLOAT), cache, len(feeds), None, None, tmp_path)
    assert error.passed and error.max_abs == 0.0 and len(Watched.alive) == 12
