"""The onnxruntime runner (onnx_collapse.runner): sessions, runs by output name, captures of intermediate
tensors, and onnxruntime's failures as one-line errors."""

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import TensorProto

from onnx_collapse import runner
from onnx_collapse.errors import CollapseError, one_line
from onnx_collapse.io import ModelSource
from onnx_collapse.runner import (
    capture_batches,
    chain_model,
    fingerprint,
    model_key,
    needed_nodes,
    node_reads,
    probe_model,
    run,
    run_scratch,
    shared,
)

MODEL = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) <float[3] w = {1.0, 2.0, 3.0}> {
    h = Mul(x, w)
    y = Relu(h)
}
""")


def _feeds(n=2):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((2, 3)).astype(np.float32)} for _ in range(n)]


def test_run_returns_each_input_sets_outputs_by_name():
    feeds = _feeds()
    results = run(ModelSource(MODEL), feeds, "model")
    assert [sorted(r) for r in results] == [["y"], ["y"]]
    for feed, result in zip(feeds, results):
        np.testing.assert_array_equal(result["y"], np.maximum(feed["x"] * np.float32([1, 2, 3]), 0))


def test_capture_adds_intermediate_tensors_inputs_and_initializers():
    feeds = _feeds(1)
    (got,) = capture_batches(ModelSource(MODEL), (), {"h": TensorProto.FLOAT}, feeds, None,
                             keep=["h", "x", "w", "y"])
    np.testing.assert_array_equal(got["h"], feeds[0]["x"] * np.float32([1, 2, 3]))
    np.testing.assert_array_equal(got["x"], feeds[0]["x"])
    np.testing.assert_array_equal(got["w"], np.float32([1, 2, 3]))
    assert "y" in got


def test_a_probed_model_outputs_intermediates_once_and_leaves_the_original_alone():
    probed = probe_model(MODEL, ["h", "h", "y", "x"], {})
    assert [o.name for o in probed.graph.output] == ["y", "h"]
    assert [o.name for o in MODEL.graph.output] == ["y"]


def test_a_chain_model_runs_just_its_nodes():
    chain = chain_model("x", "h", MODEL.graph.node[:1], MODEL.graph.initializer, TensorProto.FLOAT,
                        MODEL.opset_import, MODEL.ir_version)
    feeds = _feeds(1)
    (got,) = run(ModelSource(chain), feeds, "chain")
    np.testing.assert_array_equal(got["h"], feeds[0]["x"] * np.float32([1, 2, 3]))


def test_onnxruntime_failures_are_one_line_errors_naming_the_model():
    with pytest.raises(CollapseError, match=r"^onnxruntime cannot run the candidate: ") as caught:
        run(ModelSource(MODEL), [{"x": np.zeros((4, 4), np.float32)}], "candidate")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400
    broken = onnx.ModelProto()
    broken.CopyFrom(MODEL)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(CollapseError, match=r"^onnxruntime cannot load the broken model: "):
        run(ModelSource(broken), _feeds(1), "broken model")


def test_the_one_line_formatter_joins_lines_cuts_long_text_and_names_a_silent_exception():
    assert one_line(ValueError("a\n  b\tc")) == "a b c"
    assert one_line(ValueError("x" * 500)) == "x" * 300 + "..."
    assert one_line(ValueError("x" * 500), 200) == "x" * 200 + "..."
    assert one_line(KeyError()) == "KeyError"


def test_a_node_reads_what_its_subgraphs_read_from_outside():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (bool c, float[2] x, float[2] z) => (float[2] y) {
            y = If(c) <then_branch = t () => (float[2] a) { a = Relu(x) },
                       else_branch = e () => (float[2] b) { k = Neg(z)  b = Relu(k) }>
        }""")
    (node,) = model.graph.node
    assert sorted(node_reads(node)) == ["c", "x", "z"]  # k is made inside the branch
    kept, needs = needed_nodes(model.graph, ["y"], {})
    assert kept == [0] and needs == {"c", "x", "z"}


def test_a_full_scratch_disk_is_one_line(tmp_path, monkeypatch):
    cache = runner.BatchCache(tmp_path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner.np, "save", full)
    with pytest.raises(CollapseError, match="cannot write scratch data .*No space left"):
        cache.put("x", 0, np.ones(3))


def test_outputs_held_after_a_run_own_their_memory():
    """onnxruntime's output arrays view its buffers: one held keeps the session's whole arena alive (0.19 GB
    of PP-OCRv4 rec's verification peak). What ``run`` and ``capture_batches`` return owns its memory."""
    feeds = _feeds()
    sequence = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y, seq(float[2, 3]) s) {
        y = Relu(x)
        s = SequenceConstruct(y, x)
    }
    """)
    raw = ort.InferenceSession(sequence.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], feeds[0])
    assert not raw[0].flags.owndata  # what this guards against, as onnxruntime does it today
    for result in run(ModelSource(sequence), feeds, "model"):
        assert result["y"].flags.owndata and all(v.flags.owndata for v in result["s"])
    for feed, kept in zip(feeds, capture_batches(ModelSource(sequence), (), {}, feeds, None, keep=["y", "s"])):
        assert kept["y"].flags.owndata and all(v.flags.owndata for v in kept["s"])
        np.testing.assert_array_equal(kept["s"][1], feed["x"])


def test_stored_outputs_keep_arrays_on_disk_and_give_each_set_back(tmp_path):
    """A model's outputs for many verification rows are kept on disk, one set read back at a time; a
    sequence output stays in memory (it is not one array)."""
    sequence = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y, seq(float[2, 3]) s) {
        y = Relu(x)
        s = SequenceConstruct(y, x)
    }
    """)
    feeds = _feeds(3)
    kept = runner.stored(runner.iter_outputs(ModelSource(sequence), feeds, "model"), tmp_path / "kept")
    assert len(kept) == 3 and len(list((tmp_path / "kept").glob("*.npy"))) == 3  # y of each set; s in memory
    for feed, got in zip(feeds, kept):
        np.testing.assert_array_equal(got["y"], np.maximum(feed["x"], 0))
        np.testing.assert_array_equal(got["s"][1], feed["x"])
    assert [g["y"].shape for g in kept[1:]] == [(2, 3), (2, 3)]


def test_iter_outputs_runs_a_set_only_when_it_is_asked_for():
    calls = []

    def feeds():
        for feed in _feeds(3):
            calls.append(1)
            yield feed

    outputs = runner.iter_outputs(ModelSource(MODEL), feeds(), "model")
    assert calls == []  # the session exists, nothing ran yet
    next(outputs)
    assert len(calls) == 1
    assert len(list(outputs)) == 2 and len(calls) == 3


def test_iter_outputs_names_a_model_that_cannot_load_before_any_set_runs():
    with pytest.raises(CollapseError, match="model"):
        runner.iter_outputs(ModelSource(onnx.ModelProto()), [], "broken model")


def test_stored_outputs_count_a_negative_index_from_the_end(tmp_path):
    kept = runner.stored(runner.iter_outputs(ModelSource(MODEL), _feeds(3), "model"), tmp_path / "kept")
    np.testing.assert_array_equal(kept[-1]["y"], kept[2]["y"])
    with pytest.raises(IndexError):
        kept[3]


def test_verification_leaves_no_scratch_folder_and_an_unwritable_one_is_one_line(tmp_path, monkeypatch):
    import tempfile

    import onnx_collapse as oc

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = tmp_path / "m.onnx"
    onnx.save(MODEL, path)
    assert oc.verify(path, path).passed
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # the stored outputs went with the run

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", refused)
    with pytest.raises(CollapseError, match="cannot make a scratch folder in .*Permission denied"):
        oc.verify(path, path)


def test_shared_values_live_for_one_run_and_are_made_once_per_key(tmp_path):
    made = []

    def make(folder):
        made.append(folder)
        folder.mkdir()
        return folder

    assert shared("k", make) is None and not made  # outside a run: nothing kept
    rows = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    a, b = onnx.ModelProto(), onnx.ModelProto()  # equal content, different models
    with run_scratch():
        first = shared(("out", model_key(a), fingerprint([rows])), make)
        with run_scratch():  # a nested run shares the outer one
            assert shared(("out", model_key(a), fingerprint([dict(rows)])), make) == first
        assert shared(("out", model_key(b), fingerprint([rows])), make) != first
        changed = {"x": rows["x"] + 1}
        assert shared(("out", model_key(a), fingerprint([changed])), make) != first
        assert len(made) == 3 and first.is_dir()
    assert not first.exists()  # removed with the outermost run
