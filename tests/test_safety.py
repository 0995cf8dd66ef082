"""Nothing lost, nothing wrongly accepted: aliasing outputs, the commit protocol under crashes and signals,
file modes, bad external-data fields, sparse and many-file external data (issue 14)."""

import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_collapse import io
from onnx_collapse.io import StagedOutput
from tests.builders import mlp, parsed, save_external
from tests.common import EXE, assert_one_line_error, cli

pytestmark = pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")
X = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)


def external_model(folder: Path, name: str = "in.onnx", slope: float = 1.0) -> Path:
    """A foldable 64-128-32 MLP with every tensor in ``<name>.data``."""
    path = folder / name
    save_external(mlp(64, 128, 32, slope=slope), path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file of ``folder`` (not recursive) by name."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def outputs(path: Path, x: np.ndarray = X) -> list[np.ndarray]:
    """The model's outputs in onnxruntime for the one input it takes."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def same_outputs(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.allclose(u, v, atol=1e-4, rtol=1e-3) for u, v in zip(a, b))


def data_locations(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in io.all_tensors(model) for e in t.external_data if e.key == "location"}


# 1. outputs that are (or lead to) the input's files


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("how", ["same name", "symlink", "hard link"])
def test_output_that_is_an_input_data_file_is_refused(tmp_path, how, overwrite):
    src = external_model(tmp_path)
    out = tmp_path / "in.onnx.data"
    if how != "same name":
        out = tmp_path / "out.onnx"
        (out.symlink_to if how == "symlink" else out.hardlink_to)(tmp_path / "in.onnx.data")
    before = snapshot(tmp_path)
    result = cli("optimize", src, out, *(["--overwrite"] if overwrite else []))
    assert_one_line_error(result, 2, str(out), "in.onnx.data")
    assert snapshot(tmp_path) == before and same_outputs(outputs(src), outputs(src))


def test_output_named_like_the_inputs_data_file_leaves_the_input_intact(tmp_path):
    """a.onnx was renamed from b.onnx and still reads b.onnx.data; b.onnx is an older copy of it."""
    b = external_model(tmp_path, "b.onnx")
    a = tmp_path / "a.onnx"
    a.write_bytes(b.read_bytes())
    expected = outputs(a)
    before = snapshot(tmp_path)
    result = cli("optimize", a, b)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.onnx").read_bytes() == before["a.onnx"]
    assert (tmp_path / "b.onnx.data").read_bytes() == before["b.onnx.data"]
    assert same_outputs(outputs(a), expected) and same_outputs(outputs(b), expected)
    assert data_locations(b) != {"b.onnx.data"}


def test_overwrite_in_place_writes_new_data_and_keeps_the_exporters_data_file(tmp_path):
    """in.onnx.data is not a name this tool writes: another model may read it, so it stays (a later run's
    own OUT.<hex>.data, unused, would go)."""
    src = external_model(tmp_path)
    expected = outputs(src)
    result = cli("optimize", src, src, "--overwrite")
    assert result.returncode == 0, result.stderr
    (location,) = data_locations(src)
    assert location.startswith("in.onnx.") and location.endswith(".data") and location != "in.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.onnx", "in.onnx.data", location])
    assert same_outputs(outputs(src), expected)
    assert cli("optimize", src, src, "--overwrite").returncode == 0
    (again,) = data_locations(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.onnx", "in.onnx.data", again])


# 2. the commit protocol

FAULT_DRIVER = r"""
import os, sys
from onnx_collapse import cli, io
names, at, action, *argv = sys.argv[1:]
calls = 0

def faulty(real):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == int(at):
            if action == "kill":
                os._exit(70)
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)
    return call

for name in names.split(","):
    owner = io if hasattr(io, name) else os
    setattr(owner, name, faulty(getattr(owner, name)))
sys.argv = ["onnx-collapse", *argv]
cli.main()
"""


def with_fault(names: str, at: int, action: str, *args, env=None):
    """Run the CLI with the ``at``-th call of the functions ``names`` (io's or os's) killing the process
    (``kill``: os._exit, no clean-up) or raising ENOSPC (``enospc``)."""
    return subprocess.run([sys.executable, "-c", FAULT_DRIVER, names, str(at), action, *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("scenario", ["replace another output", "overwrite the input"])
def test_a_crash_at_any_step_leaves_the_old_output_or_the_new_one(tmp_path, scenario):
    """Kill the run before each write, rename, chmod and removal: OUT is always the old model with its
    data or the complete new one, and the input's files never change."""
    src = external_model(tmp_path)
    expected = outputs(src)
    out = src if scenario == "overwrite the input" else external_model(tmp_path, "out.onnx", slope=0.5)
    old = outputs(out)
    assert not same_outputs(old, expected) or out == src
    pristine = snapshot(tmp_path)
    extra = ["--overwrite"] if out == src else []
    for at in range(1, 40):
        result = with_fault("write_model,replace,chmod,unlink,rmdir", at, "kill", "optimize", src, out, "--no-verify",
                            *extra)
        got = outputs(out)
        assert same_outputs(got, old) or same_outputs(got, expected), at
        if out != src:
            assert all((tmp_path / n).read_bytes() == b for n, b in pristine.items() if n.startswith("in.")), at
        if result.returncode == 0:
            break
        assert result.returncode == 70, result.stderr
        for name, data in pristine.items():  # back to the starting state for the next step
            (tmp_path / name).write_bytes(data)
    else:
        pytest.fail("the run never completed")
    assert at > 4 and same_outputs(outputs(out), expected)


def test_two_writers_of_one_output_end_with_one_complete_model(tmp_path, monkeypatch):
    """Writer B commits while writer A is between its two renames: OUT is A's model with A's data."""
    out = tmp_path / "out.onnx"
    first, second = mlp(64, 128, 32), mlp(64, 96, 32)
    a = StagedOutput(out, True, None)
    b = StagedOutput(out, True, None)
    a.write(first)
    b.write(second)
    real = os.replace
    pending = [b]

    def replace(src, dst):
        real(src, dst)
        if pending:
            pending.pop().commit()

    monkeypatch.setattr(os, "replace", replace)
    with a, b:
        a.commit()
    onnx.save(first, str(tmp_path / "first.onnx"))
    assert same_outputs(outputs(out), outputs(tmp_path / "first.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.onnx", "first.onnx", *data_locations(out)])


# 3. --report


@pytest.mark.parametrize("which", ["in.onnx", "in.onnx.data", "out.onnx", "old output data"])
def test_report_naming_an_input_or_output_file_is_refused_before_any_work(tmp_path, which):
    src = external_model(tmp_path)
    out = tmp_path / "out.onnx"
    assert cli("optimize", src, out).returncode == 0
    report = tmp_path / (next(iter(data_locations(out))) if which == "old output data" else which)
    before = snapshot(tmp_path)
    assert_one_line_error(cli("optimize", src, out, "--report", report), 2, "--report", report.name)
    assert snapshot(tmp_path) == before


def test_report_into_a_missing_folder_is_refused_before_the_model_is_written(tmp_path):
    src = external_model(tmp_path)
    result = cli("optimize", src, tmp_path / "out.onnx", "--report", tmp_path / "no" / "r.json")
    assert_one_line_error(result, 2, "does not exist", "no")
    assert not (tmp_path / "out.onnx").exists()


def test_report_replaces_an_old_report_atomically_and_keeps_its_mode(tmp_path):
    src = external_model(tmp_path)
    report = tmp_path / "r.json"
    report.write_text("old")
    report.chmod(0o600)
    fails = with_fault("replace", 3, "enospc", "optimize", src, tmp_path / "o.onnx", "--report", report)
    assert fails.returncode == 2 and report.read_text() == "old", fails.stderr
    assert cli("optimize", src, tmp_path / "o.onnx", "--report", report).returncode == 0
    assert '"verification"' in report.read_text() and stat.S_IMODE(report.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# 4. outputs that are not regular files


def _special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        path.symlink_to("/dev/null")


@pytest.mark.parametrize("kind", ["fifo", "socket", "link to /dev/null"])
def test_output_that_exists_and_is_not_a_regular_file_is_refused(tmp_path, kind):
    src = external_model(tmp_path)
    out = tmp_path / "out.onnx"
    _special(out, kind)
    before = out.lstat()
    why = "a device or process file" if kind.startswith("link") else "not a regular file"
    assert_one_line_error(cli("optimize", src, out), 2, str(out), why)
    after = out.lstat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_symlinked_output_replaces_the_link_not_its_target(tmp_path):
    src = external_model(tmp_path)
    target = tmp_path / "target.onnx"
    target.write_bytes(b"keep me")
    out = tmp_path / "out.onnx"
    out.symlink_to(target)
    assert cli("optimize", src, out).returncode == 0
    assert not out.is_symlink() and target.read_bytes() == b"keep me"
    assert same_outputs(outputs(out), outputs(src))


# 5. file modes


@pytest.mark.parametrize("external", [False, True])
def test_overwrite_keeps_the_file_mode(tmp_path, external):
    src = external_model(tmp_path) if external else tmp_path / "in.onnx"
    if not external:
        onnx.save(mlp(64, 128, 32), str(src))
    src.chmod(0o600)
    assert cli("optimize", src, src, "--overwrite").returncode == 0
    written = [src] + [tmp_path / n for n in data_locations(src)]
    assert len(written) == 1 + external
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [0o600] * len(written)


# 8. bad input and unwritable output: exit 2, one line naming the file


@pytest.mark.parametrize("key,value", [
    ("location", "in.onnx\0.data"), ("location", "x" * 5000), ("offset", "-8"), ("offset", "abc"),
    ("length", "-1"), ("length", "1e3"), ("offset", "9" * 40),
], ids=["nul", "overlong location", "negative offset", "text offset", "negative length", "float length",
        "overlong offset"])
def test_bad_external_data_fields_are_one_line_errors(tmp_path, key, value):
    src = external_model(tmp_path)
    model = onnx.load(str(src), load_external_data=False)
    tensor = model.graph.initializer[0]
    entry = next((e for e in tensor.external_data if e.key == key), None) or tensor.external_data.add(key=key)
    entry.value = value
    src.write_bytes(model.SerializeToString())
    assert_one_line_error(cli("optimize", src, tmp_path / "o.onnx"), 2, "in.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_read_only_output_folder_is_a_one_line_error(tmp_path):
    src = external_model(tmp_path)
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = os.geteuid() == 0  # root writes into a mode 0555 folder: mount a read-only one instead
    if mounted and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", folder],
                                  capture_output=True).returncode != 0:
        pytest.skip("root, and no read-only tmpfs can be mounted")
    try:
        if not mounted:
            folder.chmod(0o555)
        assert_one_line_error(cli("optimize", src, folder / "o.onnx"), 2, str(folder), "not writable")
    finally:
        if mounted:
            subprocess.run(["umount", folder], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("where", ["write_model", "_copy_range"])
def test_full_disk_is_a_one_line_error_and_leaves_nothing(tmp_path, where):
    src = external_model(tmp_path, slope=0.5)  # nothing folds: every tensor is copied from the input's data
    before = snapshot(tmp_path)
    result = with_fault(where, 1, "enospc", "optimize", src, tmp_path / "o.onnx")
    assert_one_line_error(result, 2, "o.onnx", "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before) and snapshot(tmp_path) == before


def test_a_folder_where_the_data_file_used_to_go_is_harmless(tmp_path):
    src = external_model(tmp_path)
    (tmp_path / "o.onnx.data").mkdir()
    assert cli("optimize", src, tmp_path / "o.onnx").returncode == 0
    assert (tmp_path / "o.onnx.data").is_dir() and same_outputs(outputs(tmp_path / "o.onnx"), outputs(src))


# 9. sparse initializers with external data


def sparse_model(path: Path) -> None:
    """y = x @ w + s, with ``s`` a sparse initializer whose values and indices live in ``<name>.data``."""
    rng = np.random.default_rng(0)
    model = parsed("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 64] x) => (float[3, 4] y) {
            h = MatMul (x, w)
            y = Add (h, s)
        }""", {"w": rng.standard_normal((64, 4)).astype(np.float32)})
    values = numpy_helper.from_array(np.array([1.5, -2.0, 3.0], np.float32), "s")
    indices = numpy_helper.from_array(np.array([0, 5, 11], np.int64), "s_indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [3, 4]))
    data, sparse = path.parent / (path.name + ".data"), model.graph.sparse_initializer[0]
    with open(data, "wb") as f:
        for tensor in (sparse.values, sparse.indices, model.graph.initializer[0]):
            offset = f.tell()
            f.write(tensor.raw_data)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(f.tell() - offset))):
                tensor.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())


def test_sparse_initializers_with_external_data_are_refused_in_one_line(tmp_path):
    """onnx.checker cannot read sparse tensors from external data, so such a model is refused cleanly."""
    sparse_model(tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    assert_one_line_error(cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx"), 2, "m.onnx", "sparse", "'s'")
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


# 10. many data files


def many_files_model(path: Path, count: int) -> None:
    """y = x + c0 + c1 + ...: ``count`` initializers, each in a data file of its own."""
    nodes, inits, cur = [], [], "x"
    for i in range(count):
        name = f"c{i}"
        (path.parent / f"{name}.bin").write_bytes(np.full(4, 1e-3, np.float32).tobytes())
        tensor = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
        del tensor.float_data[:]
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=f"{name}.bin")
        inits.append(tensor)
        nodes.append(helper.make_node("Add", [cur, name], [f"a{i}"]))
        cur = f"a{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [2, 4])], inits)
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                     .SerializeToString())


def test_a_model_with_1100_data_files_under_a_low_open_file_limit(tmp_path):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    many_files_model(src_dir / "m.onnx", 1100)
    limit = 256

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    result = subprocess.run([EXE, "optimize", src_dir / "m.onnx", tmp_path / "o.onnx"], capture_output=True,
                            text=True, timeout=300, preexec_fn=low_limit)
    assert result.returncode == 0, result.stderr
    x = np.zeros((2, 4), np.float32)
    assert np.allclose(outputs(tmp_path / "o.onnx", x)[0], 1.1, atol=1e-4)


# 13. signals


# The console script's main with one real step made to sleep a minute after it ran, so a test can signal the
# run there: "staged" after the staged output is written, "verify" when onnxruntime is handed the verification
# copy of a model (in an onnx-collapse-verify-* folder).
PAUSE_DRIVER = r"""
import sys, time
import onnxruntime
from onnx_collapse import cli, io
where, *argv = sys.argv[1:]
if where == "staged":
    write = io.StagedOutput.write
    def paused_write(self, *args, **kwargs):
        staged = write(self, *args, **kwargs)
        time.sleep(60)
        return staged
    io.StagedOutput.write = paused_write
else:
    session = onnxruntime.InferenceSession
    def paused_session(model, *args, **kwargs):
        if "onnx-collapse-verify-" in str(model):
            time.sleep(60)
        return session(model, *args, **kwargs)
    onnxruntime.InferenceSession = paused_session
sys.argv = ["onnx-collapse", *argv]
cli.main()
"""


def start_paused(where: str, src: Path, out: Path, tmp: Path) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp))
    return subprocess.Popen([sys.executable, "-c", PAUSE_DRIVER, where, "optimize", src, out], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(folder: Path, prefix: str, proc: subprocess.Popen) -> Path:
    """The first folder under ``folder`` named ``prefix*`` that holds a file, once the run made it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for path in folder.glob(prefix + "*"):
            if path.is_dir() and any(path.iterdir()):
                return path
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {prefix}* folder appeared: {proc.communicate()[1]}")


@pytest.mark.parametrize("where,prefix", [("staged", ".onnx-collapse-"), ("verify", "onnx-collapse-verify-")])
def test_sigterm_removes_staging_and_the_verification_copy(tmp_path, where, prefix):
    temp = tmp_path / "temp"
    temp.mkdir()
    src = external_model(tmp_path)
    before = snapshot(tmp_path)
    proc = start_paused(where, src, tmp_path / "out.onnx", temp)
    wait_for(temp if where == "verify" else tmp_path, prefix, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "temp"])
    assert not [p for p in temp.iterdir() if "onnx-collapse" in p.name]
    assert snapshot(tmp_path) == before


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_staging_left_by_a_killed_run_is_removed_by_the_next_run_but_a_live_ones_is_not(tmp_path):
    src = external_model(tmp_path)
    proc = start_paused("staged", src, tmp_path / "out.onnx", tmp_path)
    stale = wait_for(tmp_path, ".onnx-collapse-", proc)
    proc.kill()
    proc.wait()
    name = stale.name
    live = tmp_path / name.replace(f"-{proc.pid}-", f"-{os.getpid()}-")
    fresh = tmp_path / (name.replace(f"-{proc.pid}-", f"-{_dead_pid()}-") + "x")
    assert str(proc.pid) in name and live != stale and fresh.name != name
    for folder in (live, fresh):
        folder.mkdir()
    old = time.time() - 120
    for folder in (stale, live):
        os.utime(folder, (old, old))
    assert cli("optimize", src, tmp_path / "out.onnx").returncode == 0
    assert not stale.exists() and live.exists() and fresh.exists()
