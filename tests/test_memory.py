"""What keeps peak memory near the weights: released file pages, parked and stubbed new tensors, dropped
exact maps. Each must leave results unchanged; the memory itself is measured in benchmarks/."""

import hashlib
import sys

import numpy as np
import onnx
import pytest
from builders import mlp, save_external

import onnx_collapse as oc
from onnx_collapse import linalg
from onnx_collapse.io import ModelSource, TensorStore
from onnx_collapse.options import Options
from onnx_collapse.pipeline import park, run_passes
from onnx_collapse.rewrite import STUB_BYTES, apply_plans


def _big_mlp() -> onnx.ModelProto:
    """A slope-1 chain whose folded weight (700 x 700 float32) is over STUB_BYTES."""
    model = mlp(n_in=700, hidden=800, n_out=700, slope=1.0)
    assert 700 * 700 * 4 >= STUB_BYTES
    return model


def test_released_file_pages_leave_the_file_and_the_values_as_they_were(tmp_path):
    path = tmp_path / "w.bin"
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 200)).astype(np.float32), rng.standard_normal((200, 100)).astype(np.float32)
    path.write_bytes(a.tobytes() + b.tobytes())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ma = np.memmap(path, np.float32, "r", 0, a.shape)
    mb = np.memmap(path, np.float32, "r", a.nbytes, b.shape)
    first = linalg.matmul64(ma, mb)  # releases both maps' pages at the end
    np.testing.assert_allclose(first, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(ma), a)  # read again from the file after the release
    assert np.allclose(linalg.matmul64(ma, mb), first, rtol=0, atol=0)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    if sys.platform.startswith("linux"):  # and the pages really left: the mapping's resident size is 0
        assert _resident_kb(path) == 0


def _resident_kb(path) -> int:
    """Resident kB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if not line[0].isupper() or ":" not in line.split()[0]:  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_freeing_memory_is_a_no_op_off_linux(monkeypatch):
    from onnx_collapse import pipeline
    monkeypatch.setattr(pipeline.sys, "platform", "win32")
    pipeline.return_free_memory()  # no ctypes lookup of a C library there


def test_a_failed_verification_returns_a_model_whose_data_can_be_read(tmp_path, monkeypatch):
    """Nothing is written when verification fails; the returned model must not point into the staging
    folder, which is gone by then."""
    from dataclasses import replace

    from onnx.external_data_helper import load_external_data_for_model

    from onnx_collapse import pipeline
    real = pipeline.compare_outputs
    monkeypatch.setattr(pipeline, "compare_outputs", lambda *a, **k: replace(real(*a, **k), passed=False))
    src = tmp_path / "in.onnx"
    save_external(_big_mlp(), src)
    out, report = oc.optimize(src, output=tmp_path / "out.onnx")
    assert not report.verification.passed and not (tmp_path / "out.onnx").exists()
    load_external_data_for_model(out, str(tmp_path))  # raises if a location does not exist
    onnx.checker.check_model(out)


def test_parked_plans_rewrite_to_the_same_model_as_plans_in_memory(tmp_path):
    model = _big_mlp()
    contexts = run_passes(ModelSource(model), Options())
    plans = [p for ctx in contexts for p in ctx.plans]
    assert any(len(t.raw_data) >= STUB_BYTES for p in plans for t in p.initializers)
    in_memory = apply_plans(model, plans)
    park(plans, tmp_path / "parked")
    assert all(len(t.raw_data) < STUB_BYTES for p in plans for t in p.initializers)  # data now in the file
    parked = apply_plans(model, plans, parked=tmp_path / "parked")
    assert parked.SerializeToString(deterministic=True) == in_memory.SerializeToString(deterministic=True)


def test_plans_keep_exact_maps_only_where_a_pass_reads_them():
    model = _big_mlp()
    plain = run_passes(ModelSource(model), Options())
    assert all(p.exact is None for ctx in plain for p in ctx.plans)
    truncating = run_passes(ModelSource(model), Options(rank_budget=0.5))
    assert all(p.exact is not None for ctx in truncating for p in ctx.plans)


def test_a_large_fold_written_with_external_data_runs_like_the_original(tmp_path):
    import onnxruntime as ort
    model = _big_mlp()
    src = tmp_path / "in.onnx"
    save_external(model, src)
    out, report = oc.optimize(src, output=tmp_path / "out.onnx")
    assert report.verification.passed and report.folds[0].status == "folded"
    x = np.random.default_rng(1).standard_normal((5, 700)).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "out.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging or scratch left behind
    assert TensorStore(tmp_path).read(onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
                                      .graph.initializer[0]) is not None


def test_a_full_disk_while_parking_is_a_one_line_error_and_leaves_nothing(tmp_path, monkeypatch):
    from onnx_collapse import pipeline
    from onnx_collapse.errors import CollapseError

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "data_backed", full)
    src = tmp_path / "in.onnx"
    save_external(_big_mlp(), src)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CollapseError, match="No space left on device") as caught:
        oc.optimize(src, output=tmp_path / "out.onnx")
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
