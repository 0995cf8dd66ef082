"""What keeps peak memory near the weights: released file pages, parked and stubbed new tensors, dropped
exact maps. Each must leave results unchanged; the memory itself is measured in benchmarks/."""

import hashlib
import sys

import numpy as np
import onnx
import pytest

import onnx_collapse as oc
from onnx_collapse import linalg
from onnx_collapse.candidates import applied
from onnx_collapse.io import ModelSource, TensorStore
from onnx_collapse.options import Options
from onnx_collapse.pipeline import run_passes
from onnx_collapse.rewrite import STUB_BYTES, apply_plans
from tests.builders import mlp, save_external


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


def test_plans_keep_exact_maps_only_where_a_pass_reads_them():
    model = _big_mlp()
    plain = run_passes(ModelSource(model), Options())
    assert all(p.exact is None for ctx in plain for p in applied(ctx.candidates))
    truncating = run_passes(ModelSource(model), Options(rank_budget=0.5))
    assert all(p.exact is not None for ctx in truncating for p in applied(ctx.candidates))


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


@pytest.mark.parametrize("stored", [(400, 3000), (3000, 400)])
@pytest.mark.parametrize("axis", [0, 1])
def test_a_slice_of_a_file_view_is_read_with_its_pages_released(tmp_path, monkeypatch, stored, axis):
    """Contiguous or strided in the file (every row's few entries), the slice comes back right and none of
    the file stays resident: the kernel maps whole runs of pages around each one touched."""
    monkeypatch.setattr(linalg, "CHUNK_BYTES", 2**16)  # a strided slice is read in many chunks
    w = np.random.default_rng(4).standard_normal(stored).astype(np.float32)
    w.tofile(tmp_path / "w.bin")
    mapped = np.memmap(tmp_path / "w.bin", np.float32, "r", 0, stored)
    for view, want in ((mapped, w), (mapped.T, w.T)):
        part = linalg.slice64(view, axis, 100, 350)
        np.testing.assert_array_equal(part, (want[100:350] if axis == 0 else want[:, 100:350]).astype(np.float64))
        assert (part.flags.c_contiguous or part.flags.f_contiguous) and part.dtype == np.float64
        if sys.platform.startswith("linux"):
            assert _resident_kb(tmp_path / "w.bin") == 0


@pytest.mark.parametrize("layout", ["file", "file transposed", "float32", "float64"])
@pytest.mark.parametrize("chunk", [2**15, 2**24])  # many slices and a result added in place, or one slice
@pytest.mark.parametrize("scipy_blas", [False, True])
def test_products_in_slices_equal_the_float64_product(tmp_path, monkeypatch, layout, chunk, scipy_blas):
    monkeypatch.setattr(linalg, "CHUNK_BYTES", chunk)
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((37, 500)), rng.standard_normal((500, 900)).astype(np.float32)
    if layout.startswith("file"):
        stored = b if layout == "file" else np.ascontiguousarray(b.T)
        stored.tofile(tmp_path / "b.bin")
        right = np.memmap(tmp_path / "b.bin", np.float32, "r", 0, stored.shape)
        right = right if layout == "file" else right.T
    else:
        right = b.astype(layout)
    want = a @ b.astype(np.float64)
    got = linalg.matmul64(a, right, scipy_blas)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-10)
    assert got.flags.c_contiguous
    np.testing.assert_allclose(linalg.matmul64(right.T, a.T, scipy_blas), want.T, rtol=1e-12, atol=1e-10)
    assert linalg.matmul64(a[:0], right, scipy_blas).shape == (0, 900)
    assert not linalg.matmul64(a[:, :0], right[:0], scipy_blas).any()


def _peak_during(func, *args):
    """Peak resident bytes above the start while ``func(*args)`` runs (Linux: VmHWM, reset first)."""
    def status(key):
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("peak memory cannot be reset here (/proc/self/clear_refs)")
    start = status("VmRSS")
    func(*args)
    return status("VmHWM") - start


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_top_eigenvectors_need_memory_for_themselves_not_for_a_full_decomposition():
    """A full symmetric eigendecomposition (numpy's eigh) needs about 4 n^2 float64 beside the matrix, more
    than a very wide layer's weights; the subset solver needs the vectors asked for."""
    n, count = 1600, 100
    assert 2 * n * n * 8 > linalg.FULL_EIGEN_WORKSPACE  # the subset solver's size
    g = np.random.default_rng(6).standard_normal((n, n))
    g = g @ g.T
    linalg.top_eigenvectors(g.copy(), 2)  # scipy imported and LAPACK warmed up outside the measurement
    peak = _peak_during(linalg.top_eigenvectors, g, count)
    assert peak < 0.3 * g.nbytes, f"{peak / 2**20:.0f} MiB for a {g.nbytes / 2**20:.0f} MiB matrix"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_onnxruntime_maps_weights_in_a_data_file_instead_of_copying_them(tmp_path):
    """Verification sessions must not hold a second copy of the weights: prepacking would copy every
    MatMul weight (measured 1.46x the weights for a 360 MB model, 1.0x without)."""
    from onnx_collapse.io import ModelSource as Source
    from onnx_collapse.runner import session

    model = mlp(n_in=2048, hidden=4096, n_out=2048, slope=0.5)  # 64 MiB of weights
    src = tmp_path / "in.onnx"
    save_external(model, src)
    weights = (2048 * 4096 * 2) * 4
    session(Source(onnx.load(str(src), load_external_data=False), tmp_path, src), "warm-up")
    peak = _peak_during(session, Source(onnx.load(str(src), load_external_data=False), tmp_path, src), "model")
    assert peak < 0.5 * weights, f"{peak / 2**20:.0f} MiB to load {weights / 2**20:.0f} MiB of weights"


def test_a_consumed_model_is_written_byte_for_byte_like_a_copied_one(tmp_path):
    from onnx_collapse.io import write_model

    model = _big_mlp()
    before = model.SerializeToString(deterministic=True)
    write_model(model, tmp_path / "copied.onnx", True, None, data_name="d.data")
    assert model.SerializeToString(deterministic=True) == before  # not consumed: untouched
    (tmp_path / "copied").mkdir()
    (tmp_path / "copied.onnx").rename(tmp_path / "copied" / "m.onnx")
    (tmp_path / "d.data").rename(tmp_path / "copied" / "d.data")
    write_model(model, tmp_path / "m.onnx", True, None, data_name="d.data", consume=True)
    for name in ("m.onnx", "d.data"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "copied" / name).read_bytes()


def test_the_final_apply_moves_the_plans_tensors_into_the_model():
    model = _big_mlp()
    contexts = run_passes(ModelSource(model), Options())
    plans = [p for ctx in contexts for p in applied(ctx.candidates)]
    copied = apply_plans(model, plans)
    assert all(p.initializers for p in plans)
    moved = apply_plans(model, plans, move=True)
    assert moved.SerializeToString(deterministic=True) == copied.SerializeToString(deterministic=True)
    assert all(not p.initializers for p in plans)  # released: the model holds the only copy
