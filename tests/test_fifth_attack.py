"""A fifth hostile pass (session 2026-12-07): the API replacing its input, outer weights copied into
subgraphs, another model's data file removed, a failed run's report, a budget called met, a number taken
for a file descriptor, and names that steer the terminal."""

import hashlib
import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnx_collapse as oc
from onnx_collapse.compare import compare_outputs
from onnx_collapse.errors import CollapseError, printable
from tests.builders import mlp
from tests.common import MODELS, cli
from tests.test_prune import _rows, pair_model


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# 1. the API refuses to replace its input unless told to, as the command line does


@pytest.mark.parametrize("command", ["optimize", "prune"])
def test_the_api_refuses_an_output_that_is_the_input_unless_overwrite(tmp_path, command):
    src = tmp_path / "in.onnx"
    onnx.save(pair_model(dup=4) if command == "prune" else mlp(8, 16, 4), src)
    before = digest(src)
    run = (lambda **kw: oc.prune(str(src), share=0.25, calibrate=_rows(96, 1), verify=False, **kw)) \
        if command == "prune" else (lambda **kw: oc.optimize(str(src), **kw))
    with pytest.raises(CollapseError, match="is the input file; pass overwrite=True"):
        run(output=str(src))
    assert digest(src) == before
    run(output=str(src), overwrite=True)
    assert digest(src) != before and onnx.load(str(src)) is not None


# 2. outer weights a subgraph reads stay outer: not stored twice, and an overridable one stays overridable


def if_model(slope: float, overridable: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    then_g = h.make_graph([h.make_node("MatMul", ["x", "W1"], ["a"]), h.make_node("LeakyRelu", ["a"], ["b"], alpha=slope),
                           h.make_node("MatMul", ["b", "W2"], ["yt"])], "then", [],
                          [h.make_tensor_value_info("yt", T.FLOAT, None)])
    else_g = h.make_graph([h.make_node("MatMul", ["x", "W3"], ["ye"])], "else", [],
                          [h.make_tensor_value_info("ye", T.FLOAT, None)])
    inits = [nh.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (8, 16)), ("W2", (16, 4)), ("W3", (8, 4)))]
    inputs = [h.make_tensor_value_info("x", T.FLOAT, ["n", 8]), h.make_tensor_value_info("c", T.BOOL, [])]
    if overridable:
        inputs.append(h.make_tensor_value_info("W3", T.FLOAT, [8, 4]))
    g = h.make_graph([h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "g", inputs,
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 4])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def weights(model: onnx.ModelProto) -> int:
    count = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                count += sum(int(np.prod(t.dims)) for t in a.g.initializer)
    return count


def test_a_reverted_fold_in_a_branch_leaves_the_outer_weights_stored_once():
    model = if_model(0.97, overridable=False)
    out, report = oc.optimize(model)
    assert not report.folded and weights(out) == weights(model) == report.after.params


def test_an_overridable_outer_weight_read_by_a_branch_stays_overridable(tmp_path):
    model = if_model(1.0, overridable=True)
    out, report = oc.optimize(model)
    assert report.folded and report.verification.passed
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32), "c": np.array(False),
             "W3": np.ones((8, 4), np.float32)}
    run = [ort.InferenceSession(m.SerializeToString()).run(None, feeds)[0] for m in (model, out)]
    np.testing.assert_allclose(run[1], run[0], atol=1e-5)  # the fed W3 is read, not a copy of its default


# 3. OUT.data written by another tool may be another model's too: it stays


def test_writing_out_keeps_an_exporters_data_file_that_another_model_reads(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for path in (tmp_path / "a" / "m.onnx", tmp_path / "b" / "other.onnx", tmp_path / "b" / "out.onnx"):
        location = "m.onnx.data" if path.parent.name == "a" else "out.onnx.data"
        onnx.save(onnx.load(str(MODELS / "three_layer.onnx")), str(path), save_as_external_data=True,
                  location=location, size_threshold=0)
    assert cli("optimize", tmp_path / "a" / "m.onnx", tmp_path / "b" / "out.onnx").returncode == 0
    ort.InferenceSession(str(tmp_path / "b" / "other.onnx"))  # its data file is still there
    assert (tmp_path / "b" / "out.onnx.data").exists()


# 4. a failed run leaves the older output and its report as they were, a pair


def test_a_failed_run_leaves_the_older_output_and_report_as_a_pair(tmp_path):
    src, out, rep = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(pair_model(dup=4), src)
    np.savez(tmp_path / "c.npz", **_rows(96, 1))
    np.savez(tmp_path / "h.npz", **_rows(32, 2))
    common = ["--calibrate", tmp_path / "c.npz", "--inputs", tmp_path / "h.npz", "--rtol", "0", "--report", rep]
    assert cli("prune", src, out, "--share", "0.25", "--atol", "1", *common).returncode == 0
    before = digest(out), digest(rep)
    failed = cli("prune", src, out, "--share", "0.75", "--atol", "1e-9", *common)
    assert failed.returncode == 1 and "nor --report" in failed.stderr
    assert (digest(out), digest(rep)) == before


# 5. a rank budget that even every layer's cheapest option exceeds is not "met"


def test_a_budget_below_the_cheapest_options_is_not_met():
    _, report = oc.optimize(str(MODELS / "bottleneck.onnx"), low_rank="all", rank_budget=0.0001, atol=10.0)
    t = report.truncation
    assert not t.met and "NOT met" in t.summary and "cheapest option" in t.summary
    _, fine = oc.optimize(str(MODELS / "bottleneck.onnx"), low_rank="all", rank_budget=0.01, atol=10.0)
    assert fine.truncation.met and "met:" in fine.truncation.summary


# 6. a number is not a file: inputs=3 is refused, the caller's descriptor left open


def test_inputs_given_as_a_number_is_refused_and_no_descriptor_closed(tmp_path):
    fd = os.open(MODELS / "three_layer.onnx", os.O_RDONLY)
    try:
        with pytest.raises(CollapseError, match="inputs must be an .npz path or a dict of arrays, not int"):
            oc.optimize(str(MODELS / "three_layer.onnx"), inputs=fd)
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


# 7. a node name cannot steer the terminal


def test_control_characters_in_names_are_shown_as_escapes(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [h.make_node("MatMul", ["x", "W1"], ["a"], name="\x1b]0;title\x07one"),
             h.make_node("MatMul", ["a", "W2"], ["y"], name="two\rverification: PASSED")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 4])],
                     [nh.from_array(rng.standard_normal((8, 16)).astype(np.float32), "W1"),
                      nh.from_array(rng.standard_normal((16, 4)).astype(np.float32), "W2")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "m.onnx")
    for args in (["optimize", tmp_path / "m.onnx", tmp_path / "o.onnx"], ["analyze", tmp_path / "m.onnx"]):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\r" not in result.stdout and "\x07" not in result.stdout
        assert "\\x1b]0;title\\x07one" in result.stdout and "two\\rverification: PASSED" in result.stdout
    assert json.loads(cli("analyze", tmp_path / "m.onnx", "--json").stdout)  # JSON escapes them itself
    assert printable("a\tb\nc é") == "a\\tb\nc é"


def test_the_api_copy_of_a_shipped_model_is_left_as_it_was(tmp_path):
    """The probe that found item 1 replaced a shipped model; the API never touches a file it only reads."""
    src = tmp_path / "three_layer.onnx"
    shutil.copy(MODELS / "three_layer.onnx", src)
    before = digest(src)
    oc.optimize(str(src), output=str(tmp_path / "o.onnx"))
    assert digest(src) == before


# 8. the API's bad values are one CollapseError naming what is wrong, never another exception


M = str(MODELS / "three_layer.onnx")
API_MISUSE = [
    ("input_shapes", lambda: oc.optimize(M, input_shapes={"x": (-1, 64)})),
    ("input_shapes", lambda: oc.optimize(M, input_shapes={"x": (1.5, 64)})),
    ("input_shapes", lambda: oc.optimize(M, input_shapes="x:1x64")),
    ("input_shapes", lambda: oc.optimize(M, input_shapes={"x": "2x64"})),
    ("input_shapes", lambda: oc.verify(M, M, input_shapes={"x": (-2, 64)})),
    ("max_verify_memory", lambda: oc.optimize(M, max_verify_memory="8G")),
    ("max_verify_memory", lambda: oc.optimize(M, max_verify_memory=float("nan"))),
    ("max_verify_memory", lambda: oc.verify(M, M, max_memory="1G")),
    ("verify", lambda: oc.optimize(M, verify="no")),
    ("inputs", lambda: oc.optimize(M, inputs={"x": np.array(["str"] * 2)})),
    ("options", lambda: oc.optimize(M, {"rank_budget": 0.5})),
    ("options", lambda: oc.prune(M, "out.onnx", calibrate=_rows(8, 1))),
    ("a model is a path", lambda: oc.optimize(None)),
    ("a model is a path", lambda: oc.optimize(open(M, "rb").read())),
    ("a model is a path", lambda: oc.verify(M, None)),
    ("the output must be a path", lambda: oc.optimize(M, output=1)),
    ("the report must be a path", lambda: oc.optimize(M, report_file=2)),
    ("rank_budget is for optimize", lambda: oc.analyze(M, rank_budget=0.5)),
]


@pytest.mark.parametrize("words, call", API_MISUSE, ids=[f"{w}-{i}" for i, (w, _) in enumerate(API_MISUSE)])
def test_api_misuse_is_one_collapse_error_naming_it(words, call):
    with pytest.raises(CollapseError, match=words):
        call()


def test_numpy_integers_are_taken_as_plain_numbers():
    _, report = oc.optimize(M, check_n=np.int8(1), seed=np.int64(3))
    assert report.verification.passed and report.verification.n_input_sets == 1


# 9. the relative error where the reference is 0 is infinite (it was 1e-2 / the smallest float: 4.5e305)


def test_relative_error_where_the_reference_is_zero_is_infinite_and_zero_where_both_are():
    e = np.array([[0.0, 1.0, 0.0]], np.float32)
    a = np.array([[1e-2, 1.0, 0.0]], np.float32)
    out = compare_outputs([{"y": e}], [{"y": a}], None, None, "rows").outputs[0]
    assert out.max_rel == np.inf and out.max_abs == pytest.approx(1e-2)
    same = compare_outputs([{"y": e}], [{"y": e.copy()}], None, None, "rows").outputs[0]
    assert same.max_rel == 0.0


# 10. layers whose size depends on the input: a MAC or time budget needs them measured, and no table
# shows one position's MACs as a sample's


def dynamic_conv_chain() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    g = h.make_graph([h.make_node("Conv", ["x", "W1"], ["a"], kernel_shape=[1, 1]),
                      h.make_node("Conv", ["a", "W2"], ["y"], kernel_shape=[1, 1])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["n", 4, "h", "w"])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 4, "h", "w"])],
                     [nh.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "W1"),
                      nh.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "W2")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("metric", ["macs", "time"])
def test_a_mac_or_time_budget_on_unmeasured_layers_is_refused(metric):
    with pytest.raises(CollapseError, match=f"budget_metric='{metric}' needs each layer's size.*input_shapes"):
        oc.optimize(dynamic_conv_chain(), low_rank="all", rank_budget=0.3, budget_metric=metric, atol=100.0)
    _, report = oc.optimize(dynamic_conv_chain(), low_rank="all", rank_budget=0.3, budget_metric="macs", atol=100.0,
                            input_shapes={"x": (1, 4, 5, 5)})
    assert report.before.linear_macs == 2 * 4 * 8 * 25  # counted at 5x5: 1,600


def test_unmeasured_layers_show_no_per_position_count_as_a_samples(tmp_path):
    onnx.save(dynamic_conv_chain(), tmp_path / "m.onnx")
    text = cli("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx").stdout
    assert "0 + ?" in text  # the summary: what was counted, and more not counted
    row = next(line for line in text.splitlines() if line.startswith("1 "))
    assert row.count("64>16") == 1 and " ? " in row  # the weights 64>16; the MACs unknown, not 64>16
    assert "not counted" in cli("analyze", tmp_path / "m.onnx").stdout


# 11. messages that said too little


def test_a_reference_with_another_output_shape_is_said_as_such():
    with pytest.raises(CollapseError, match=r"output 'y' has shape 2x10 in the reference but 2x32"):
        oc.optimize(M, reference=str(MODELS / "mlp_prelu_channel.onnx"))


def test_max_error_that_no_truncation_meets_says_so_in_the_notes():
    _, report = oc.optimize(M, max_error=0.0, low_rank="all")
    assert "see the notes" in report.truncation.summary
    assert any(n.startswith("max error 0: no truncation") for n in report.notes)


def test_a_nan_weight_is_said_as_not_finite_not_as_out_of_range(tmp_path):
    model = mlp(8, 16, 4, slope=1.0)
    weight = next(t for t in model.graph.initializer if len(t.dims) == 2)
    values = nh.to_array(weight).copy()
    values[0, 0] = np.nan
    weight.CopyFrom(nh.from_array(values, weight.name))
    _, report = oc.optimize(model, verify=False)
    assert any("not finite (a NaN or infinite weight" in f.reason for f in report.folds)
