"""What verification feeds the models (onnx_collapse.inputs): random input sets, given arrays checked
against the model's inputs, and the liveness-based estimate of the memory a run needs."""

import numpy as np
import onnx
import onnx.parser
import pytest

from onnx_collapse.cli import with_flags
from onnx_collapse.errors import CollapseError
from onnx_collapse.inputs import (
    DEFAULT_DIM,
    check_memory,
    make_feeds,
    peak_live_bytes,
    planned_inputs,
    random_feeds,
    topological_order,
    verification_bytes,
)

CHAIN = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
chain (float[1000] x) => (float[1000] y) {
    a = Relu(x)
    b = Relu(a)
    c = Relu(b)
    y = Relu(c)
}
""")

DYNAMIC = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
dynamic (float[batch, 4] x, int64[batch] k) => (float[batch, 4] y) {
    y = Relu(x)
}
""")

F32 = np.dtype(np.float32)


def test_dynamic_dims_default_and_given_shapes_are_used():
    assert planned_inputs(DYNAMIC, {}) == [("x", F32, (DEFAULT_DIM, 4)), ("k", np.dtype(np.int64), (DEFAULT_DIM,))]
    assert planned_inputs(DYNAMIC, {"x": (5, 4)})[0] == ("x", F32, (5, 4))


def test_random_feeds_are_seeded():
    first, again = random_feeds(DYNAMIC, {}, 3, 2), random_feeds(DYNAMIC, {}, 3, 2)
    assert len(first) == 2 and all(np.array_equal(f[n], g[n]) for f, g in zip(first, again) for n in f)
    assert not np.array_equal(first[0]["x"], first[1]["x"])


def test_input_errors_name_the_parameter_for_the_api_and_the_flag_for_the_cli():
    with pytest.raises(CollapseError) as caught:
        planned_inputs(DYNAMIC, {"x": (5, 3)})
    assert str(caught.value) == "input_shapes x: dim 1 is fixed to 4 in the model, not 3"
    assert with_flags(caught.value) == "--input-shape x: dim 1 is fixed to 4 in the model, not 3"
    with pytest.raises(CollapseError) as caught:
        planned_inputs(DYNAMIC, {"z": (1,)})
    assert str(caught.value).startswith("input_shapes names 'z', which is not a model input")
    assert with_flags(caught.value).startswith("--input-shape names 'z'")


def test_given_arrays_are_cast_when_no_value_changes_and_non_finite_ones_refused():
    feeds, where = make_feeds(DYNAMIC, {"x": np.ones((2, 4)), "k": np.arange(2, dtype=np.int32)}, {}, 0, 1)
    assert feeds[0]["x"].dtype == np.float32 and feeds[0]["k"].dtype == np.int64
    assert where == "the given inputs (x cast from float64 to float32; k cast from int32 to int64)"
    with pytest.raises(CollapseError, match=r"^inputs: array 'x' holds 1 NaN"):
        make_feeds(DYNAMIC, {"x": np.array([[np.nan, 0, 0, 0]], np.float32), "k": np.zeros(1, np.int64)}, {}, 0, 1)


def test_the_memory_estimate_is_the_peak_of_live_tensors_not_their_sum():
    """x -> a -> b -> c -> y: at most two of a, b, c, y (4000 bytes each) are alive at once, where the
    old estimate summed all four."""
    planned = [("x", F32, (1000,))]
    inputs, tensor = 4000, 4000
    old = 1 * (inputs + 4 * tensor) + 4 * tensor  # every intermediate alive at once
    new = 1 * (inputs + 2 * tensor) + 2 * tensor
    assert verification_bytes(CHAIN, planned, 1) == new == old - 4 * tensor
    assert verification_bytes(CHAIN, planned, 3) == 3 * (inputs + 2 * tensor) + 2 * tensor


def test_a_tensor_lives_until_its_last_reader_and_an_output_until_the_end():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1] x) => (float[1] y, float[1] a) {
        a = Relu(x)
        b = Relu(x)
        c = Relu(b)
        d = Add(c, b)
        y = Relu(d)
    }
    """)
    sizes = {"a": 1, "b": 10, "c": 100, "d": 1000, "y": 10000}
    # step 3 (d = Add(c, b)): a (an output), b, c, d alive; step 4: a, d, y
    assert peak_live_bytes(model.graph, sizes) == max(1 + 10 + 100 + 1000, 1 + 1000 + 10000)
    assert peak_live_bytes(model.graph, {"c": 100}) == 100  # tensors not sized count nothing


def test_nodes_out_of_order_are_walked_in_topological_order():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1] x) => (float[1] y) {
        y = Relu(b)
        b = Relu(a)
        a = Relu(x)
    }
    """)
    assert [n.output[0] for n in topological_order(model.graph)] == ["a", "b", "y"]
    assert peak_live_bytes(model.graph, {"a": 1, "b": 2, "y": 4}) == 6


def test_a_tensor_read_inside_a_subgraph_lives_until_the_node_that_holds_it():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[1] x) => (float[1] y) {
        a = Relu(x)
        b = Relu(x)
        y = If(c) <then_branch = t () => (float[1] o) { o = Relu(a) },
                   else_branch = e () => (float[1] o) { o = Relu(b) }>
    }
    """)
    assert peak_live_bytes(model.graph, {"a": 1, "b": 2, "y": 4}) == 7


def test_the_memory_refusal_names_parameters_for_the_api_and_flags_for_the_cli():
    planned = [("x", F32, (1000,))]
    with pytest.raises(CollapseError) as caught:
        check_memory(CHAIN, planned, 1, limit=1000)
    api, cli = str(caught.value), with_flags(caught.value)
    assert "(max_verify_memory); set smaller dims with input_shapes, give real data with inputs, or raise " \
           "max_verify_memory" in api
    assert "(--max-verify-memory); set smaller dims with --input-shape, give real data with --inputs, or raise " \
           "--max-verify-memory" in cli
    check_memory(CHAIN, planned, 1, limit=20000)  # exactly the estimate: allowed


WIDE = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
wide (float[rows, 256] x) => (float[rows, 256] y) {
    a = Relu(x)
    y = Relu(a)
}
""")


def _rows(sets):
    return [len(s["x"]) for s in sets]


def test_a_batch_too_big_for_one_run_goes_in_sets_of_rows_that_fit():
    from onnx_collapse.inputs import run_bytes, split_rows
    one = run_bytes(WIDE, [("x", F32, (1, 256))])
    assert one == 2 * 256 * 4  # a and y alive at once, per row
    x = np.arange(100 * 256, dtype=np.float32).reshape(100, 256)
    sets = split_rows(WIDE, {"x": x}, limit=30 * one)
    assert _rows(sets) == [30, 30, 30, 10]
    assert all(np.shares_memory(s["x"], x) for s in sets)  # views: the rows are not copied
    assert np.array_equal(np.concatenate([s["x"] for s in sets]), x)
    assert _rows(split_rows(WIDE, {"x": x}, limit=1)) == [1] * 100  # at least one row a set
    assert _rows(split_rows(WIDE, {"x": x}, limit=100 * one)) == [100]  # all rows fit: one set


def test_rows_are_split_only_along_a_batch_axis_every_input_shares():
    from onnx_collapse.inputs import split_rows
    fixed = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[100, 256] x) => (float[100, 256] y) { y = Relu(x) }""")
    two_names = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[n, 256] x, float[m, 256] z) => (float[n, 256] y) { y = Relu(x) }""")
    x = np.zeros((100, 256), np.float32)
    assert _rows(split_rows(fixed, {"x": x}, limit=1)) == [100]
    assert _rows(split_rows(two_names, {"x": x, "z": x}, limit=1)) == [100]  # two axes that may differ
    assert _rows(split_rows(DYNAMIC, {"x": np.zeros((6, 4), np.float32), "k": np.zeros(5, np.int64)},
                            limit=1)) == [6]  # rows of unequal counts
    both = split_rows(DYNAMIC, {"x": np.zeros((6, 4), np.float32), "k": np.arange(6)}, limit=1)
    assert [(len(s["x"]), s["k"].tolist()) for s in both] == [(1, [k]) for k in range(6)]


def test_verification_over_sets_of_rows_counts_every_row_and_says_so(tmp_path, monkeypatch):
    """A verification file too big for one run: the rows run in sets, and the verdict is the one the whole
    batch gives (the agreement over all rows: one row of 40 disagrees)."""
    from onnx_collapse import inputs
    from onnx_collapse.verify import verify
    flip = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[rows, 256] x) => (float[rows, 256] y) { y = Neg(x) }""")
    ident = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[rows, 256] x) => (float[rows, 256] y) { y = Identity(x) }""")
    x = np.zeros((40, 256), np.float32)
    x[:, 0] = 1.0
    x[7, :] = 0.0  # one row whose argmax cannot be told from its negation's: it alone agrees
    data = tmp_path / "rows.npz"
    np.savez(data, x=x)
    whole = verify(ident, flip, inputs=str(data), metric="top1", min_agreement=0.01)
    monkeypatch.setattr(inputs, "SET_BYTES", 256 * 4 * 6)  # six rows a run
    split = verify(ident, flip, inputs=str(data), metric="top1", min_agreement=0.01)
    assert whole.n_input_sets == 1 and split.n_input_sets == 7
    assert split.outputs[0].agreement == whole.outputs[0].agreement == pytest.approx(1 / 40)
    assert split.outputs[0].max_abs == whole.outputs[0].max_abs == 2.0
    assert "its 40 rows run in sets of up to 6" in split.inputs
    report = verify(ident, ident, inputs=str(data))
    assert report.passed


def test_the_memory_estimate_of_a_split_batch_counts_one_set_running_and_the_outputs_kept(monkeypatch):
    from onnx_collapse import inputs
    rows, row = 1000, 256 * 4
    planned = [("x", F32, (rows, 256))]
    whole = verification_bytes(WIDE, planned, 1)
    assert whole == rows * row + 2 * rows * row + 2 * rows * row  # inputs, two models' outputs, a run of all rows
    monkeypatch.setattr(inputs, "SET_BYTES", 2 * row * 10)  # ten rows a run
    assert verification_bytes(WIDE, planned, 1) == rows * row + 2 * rows * row + 2 * 10 * row
