"""Channel pruning of convolution pairs: which pairs are found, that a redundant pair is pruned without loss,
that each reader's refit is the least-squares optimum on the pruned model's own inputs, and the command's
criterion, search and refusals."""

import hashlib
import importlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_collapse.errors import CollapseError
from onnx_collapse.prune import constant_tensors, find_pairs, prune, render_prune
from tests.common import assert_one_line_error, cli


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def pair_model(dup=4, c_in=3, c=12, c_out=10, seed=0, second=False, tweak=None) -> onnx.ModelProto:
    """x -> Conv 3x3 (c) -> Mul 0.5 -> HardSwish -> Mul per channel -> depthwise 3x3 -> BatchNorm -> Relu ->
    Conv 1x1 (c_out) [-> HardSwish -> depthwise -> Conv 1x1 (6)]. ``dup`` channels of the first pair repeat
    their neighbours exactly, so the pair loses nothing when pruned to c - dup channels."""
    rng = np.random.default_rng(seed)

    copies = np.arange(1, c, max(c // max(dup, 1), 1))[:dup]  # channels 1, 4, 7, 10 repeat 0, 3, 6, 9

    def dup_rows(a):
        a = np.array(a)
        a[copies] = a[copies - 1]
        return a

    inits = [
        _init("wa", dup_rows(rng.normal(size=(c, c_in, 3, 3)) * 0.4)), _init("ba", dup_rows(rng.normal(size=c) * 0.1)),
        _init("half", [0.5]),
        _init("scale", dup_rows(rng.uniform(0.5, 1.5, size=c)).reshape(1, c, 1, 1)),
        _init("wd", dup_rows(rng.normal(size=(c, 1, 3, 3)) * 0.5)), _init("bd", dup_rows(rng.normal(size=c) * 0.1)),
        _init("bn_s", dup_rows(rng.uniform(0.5, 1.5, size=c))), _init("bn_b", dup_rows(rng.normal(size=c) * 0.1)),
        _init("bn_m", dup_rows(rng.normal(size=c) * 0.1)), _init("bn_v", dup_rows(rng.uniform(0.5, 1.5, size=c))),
        _init("wb", rng.normal(size=(c_out, c, 1, 1)) * 0.4), _init("bb", rng.normal(size=c_out) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["a", "half"], ["a2"], name="mul"),
        helper.make_node("HardSwish", ["a2"], ["a3"], name="hs"),
        helper.make_node("Mul", ["a3", "scale"], ["a4"], name="scale_mul"),
        helper.make_node("Conv", ["a4", "wd", "bd"], ["d"], name="DW", group=c, pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["d", "bn_s", "bn_b", "bn_m", "bn_v"], ["n"], name="BN"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wb", "bb"], ["b"], name="B"),
    ]
    out, width = "b", c_out
    if second:
        inits += [_init("wd2", rng.normal(size=(c_out, 1, 3, 3)) * 0.5),
                  _init("wc", rng.normal(size=(6, c_out, 1, 1)) * 0.4)]
        nodes += [helper.make_node("HardSwish", ["b"], ["b2"], name="hs2"),
                  helper.make_node("Conv", ["b2", "wd2"], ["d2"], name="DW2", group=c_out, pads=[1, 1, 1, 1]),
                  helper.make_node("Conv", ["d2", "wc"], ["y"], name="C")]
        out, width = "y", 6
    if tweak is not None:
        tweak(nodes, inits)
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, 6, 6])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", width, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _rows(n, seed, c_in=3):
    return {"x": np.random.default_rng(seed).normal(size=(n, c_in, 6, 6)).astype(np.float32)}


def _run(model, feed, names=None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(names, feed)


def _with_output(model, name):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy


def _fit_errors(model, out, reader_input, rows):
    """The last reader's squared error in ``out`` against ``model``'s output on ``rows``, the least-squares
    optimum of that error given the reader's input in ``out``, and the output's total squared spread."""
    x, = _run(_with_output(out, reader_input), rows, [reader_input])  # the reader's input, in the pruned model
    y, = _run(model, rows)                                           # its output, in the original
    rows_x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1]).astype(np.float64)
    rows_y = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1]).astype(np.float64)
    design = np.column_stack([rows_x, np.ones(len(rows_x))])
    coef, *_ = np.linalg.lstsq(design, rows_y, rcond=None)
    got, = _run(out, rows)
    tool = float(np.sum((np.moveaxis(got, 1, -1).reshape(rows_y.shape) - rows_y) ** 2))
    return tool, float(np.sum((design @ coef - rows_y) ** 2)), float(np.sum((rows_y - rows_y.mean(0)) ** 2))


def test_the_pair_is_found_through_per_channel_ops_depthwise_and_batchnorm():
    model = pair_model()
    pairs = find_pairs(model)
    assert len(pairs) == 1
    p = pairs[0]
    names = [model.graph.node[k].name for k in (p.producer, p.reader, *p.depthwise)]
    assert names == ["A", "B", "DW"] and p.channels == 12
    assert dict(p.sliced) == {"scale": 1, "bn_s": 0, "bn_b": 0, "bn_m": 0, "bn_v": 0, "wd": 0, "bd": 0}


def _refuse(tweak):
    return find_pairs(pair_model(tweak=tweak)) == []


def test_pairs_that_cannot_be_pruned_alone_are_not_found():
    def shared_weight(nodes, inits):  # another node reads the producer's weight
        nodes.append(helper.make_node("Conv", ["x", "wa"], ["other"], name="other"))

    def transposed(nodes, inits):  # a node that moves channels reads the region
        nodes.append(helper.make_node("Identity", ["a3"], ["seen"]))
        nodes.append(helper.make_node("Transpose", ["seen"], ["t"], perm=[0, 1, 3, 2]))

    def spatial_constant(nodes, inits):  # varies along the width, not per channel
        inits[3].CopyFrom(_init("scale", np.linspace(0.5, 1.5, 6).reshape(1, 1, 1, 6)))

    def wide_reader(nodes, inits):  # a 3x3 reader mixes positions: not a 1x1 least-squares problem
        inits[10].CopyFrom(_init("wb", np.ones((10, 12, 3, 3))))

    def shared_scale(nodes, inits):  # the per-channel constant is read elsewhere too
        nodes.append(helper.make_node("Mul", ["x", "scale"], ["also"]))

    for tweak in (shared_weight, transposed, spatial_constant, wide_reader, shared_scale):
        assert _refuse(tweak), tweak.__name__
    seen = pair_model()  # the region is also a model output: its channels are not the reader's alone
    seen.graph.output.append(helper.make_tensor_value_info("a3", TensorProto.FLOAT, None))
    assert find_pairs(seen) == []
    inner = pair_model()  # a branch of an If reads the region from the outer scope
    branch = helper.make_graph([helper.make_node("Identity", ["a3"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    inner.graph.initializer.append(numpy_helper.from_array(np.array(True), "flag"))
    inner.graph.node.append(helper.make_node("If", ["flag"], ["picked"], then_branch=branch, else_branch=branch))
    assert find_pairs(inner) == []


def test_a_redundant_pair_is_pruned_to_its_distinct_channels_without_loss():
    model = pair_model()
    calib, held = _rows(96, 1), _rows(16, 2)
    out, report = prune(model, share=1 / 3, calibrate=calib, inputs=held, atol=1e-3, rtol=1e-3)
    assert report.verification.passed and [(p.channels, p.kept) for p in report.pairs] == [(12, 8)]
    consts = {k: numpy_helper.to_array(v) for k, v in constant_tensors(out.graph).items()}
    assert consts["wa"].shape == (8, 3, 3, 3) and consts["wd"].shape == (8, 1, 3, 3)
    assert consts["wb"].shape == (10, 8, 1, 1) and consts["scale"].shape == (1, 8, 1, 1)
    assert all(consts[k].shape == (8,) for k in ("bn_s", "bn_b", "bn_m", "bn_v", "bd", "ba"))
    group = next(a.i for n in out.graph.node if n.name == "DW" for a in n.attribute if a.name == "group")
    assert group == 8
    want, = _run(model, held)
    got, = _run(out, held)
    assert np.max(np.abs(got - want)) < 1e-3 * np.max(np.abs(want))
    assert report.after.linear_macs < report.before.linear_macs and report.after.params < report.before.params


def test_each_reader_is_refitted_by_least_squares_on_the_pruned_models_own_inputs():
    model = pair_model(dup=0, seed=5, second=True)
    calib = _rows(128, 3)
    out, report = prune(model, share=0.25, calibrate=calib, inputs=_rows(16, 4), atol=10.0)
    assert [(p.channels, p.kept) for p in report.pairs] == [(12, 9), (10, 7)]  # sequential: B is pair 2's producer
    tool, best, spread = _fit_errors(model, out, "d2", calib)
    assert best <= tool <= 1.01 * best + 1e-9
    assert tool < 0.5 * spread  # it explains most of the output


def test_pruning_refuses_a_run_whose_check_could_only_fail_or_that_has_too_few_rows():
    model = pair_model()
    with pytest.raises(CollapseError, match="metric"):
        prune(model, share=0.25, calibrate=_rows(96, 1))
    with pytest.raises(CollapseError, match="calibrate"):
        prune(model, share=0.25, metric="top1")
    with pytest.raises(CollapseError, match="at least 4"):
        prune(model, share=0.25, calibrate=_rows(3, 1), inputs=_rows(8, 2), atol=1.0)
    with pytest.raises(CollapseError, match="share"):
        prune(model, share=1.5, calibrate=_rows(96, 1), atol=1.0)


def test_share_auto_finds_the_largest_share_that_passes():
    model = pair_model()
    out, report = prune(model, share="auto", calibrate=_rows(96, 1), inputs=_rows(16, 2), atol=1e-3, rtol=1e-3)
    assert report.verification.passed and report.search and report.search[0]["share"] == 0.75
    assert not report.search[0]["passed"]
    assert [p.kept for p in report.pairs] == [8]  # exactly the distinct channels: one fewer fails
    assert all(not s["passed"] for s in report.search if s["share"] > report.share)


def test_share_auto_with_confidence_keeps_a_share_whose_agreement_bound_passes():
    kw = dict(share="auto", calibrate=_rows(96, 1), inputs=_rows(64, 2), metric="top1", min_agreement=0.91)
    _, plain = prune(pair_model(), **kw)
    _, bounded = prune(pair_model(), confidence=0.9, **kw)
    lucky = [s for s in plain.search if s["passed"] and s["agreement"][0] < 0.915]
    assert lucky and plain.share >= lucky[0]["share"]  # plain keeps a share that barely measured 91 %
    assert bounded.share < plain.share and bounded.verification.outputs[0].agreement_bound >= 0.91
    assert all(s["passed"] == (s["agreement_bound"][0] >= 0.91) for s in bounded.search)
    shown = render_prune(bounded)  # each share tried, with the agreement and bound it was judged by
    for s in bounded.search:
        assert f"  {s['share']:.4g}: agreement {100 * s['agreement'][0]:.1f}% (bound " \
               f"{100 * s['agreement_bound'][0]:.1f}%) {'passed' if s['passed'] else 'failed'}" in shown


@pytest.mark.slow
def test_the_command_writes_a_verified_model_and_refuses_what_fails(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(pair_model(), src)
    np.savez(tmp_path / "calib.npz", **_rows(96, 1))
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    r = cli("prune", src, out, "--calibrate", tmp_path / "calib.npz")
    assert_one_line_error(r, 2, "--metric")
    r = cli("prune", src, out, "--calibrate", tmp_path / "calib.npz", "--share", "0.5", "--atol", "1e-9",
            "--rtol", "0")
    assert r.returncode == 1 and "no output written" in r.stderr and not out.exists()
    r = cli("prune", src, out, "--calibrate", tmp_path / "calib.npz", "--share", "auto", "--atol", "1e-3")
    assert r.returncode == 0, r.stderr
    assert "A -> B: 12 -> 8 channels" in r.stdout and "PASSED" in r.stdout
    onnx.checker.check_model(onnx.load(out))
    r = cli("prune", src, src, "--calibrate", tmp_path / "calib.npz", "--atol", "1")
    assert_one_line_error(r, 2, "input file")
    calib_bytes = (tmp_path / "calib.npz").read_bytes()
    r = cli("prune", src, tmp_path / "calib.npz", "--calibrate", tmp_path / "calib.npz", "--atol", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "calib.npz").read_bytes() == calib_bytes
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def test_an_external_data_model_is_pruned_into_a_complete_output_and_its_data_is_untouched(tmp_path):
    src, out = tmp_path / "in" / "model.onnx", tmp_path / "out" / "model.onnx"
    src.parent.mkdir()
    out.parent.mkdir()
    model = pair_model()
    onnx.save(model, src, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
              size_threshold=0)
    data = src.with_name("model.onnx.data")
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    held = _rows(16, 2)
    pruned, report = prune(str(src), share=1 / 3, calibrate=_rows(96, 1), inputs=held, atol=1e-3, rtol=1e-3,
                           output=out)
    assert report.verification.passed and hashlib.sha256(data.read_bytes()).hexdigest() == before
    written = onnx.load(str(out))  # loads its own data file, beside it
    unsaved, _ = prune(str(src), share=1 / 3, calibrate=_rows(96, 1), verify=False)
    assert np.allclose(_run(unsaved, held)[0], _run(written, held)[0], atol=1e-5)  # returned self-contained
    assert any(p.name.endswith(".data") for p in out.parent.iterdir())
    want, = _run(pair_model(), held)  # onnx.save moved ``model``'s tensors out to the file
    got, = _run(written, held)
    assert np.max(np.abs(got - want)) < 1e-3 * np.max(np.abs(want))


def test_models_as_exporters_and_tools_write_them_are_pruned_or_left_alone_correctly():
    held = _rows(8, 2)
    inferred = onnx.shape_inference.infer_shapes(pair_model())  # stored shapes of the tensors that shrink
    assert any(v.name == "a4" for v in inferred.graph.value_info)
    out, report = prune(inferred, share=1 / 3, calibrate=_rows(96, 1), inputs=held, atol=1e-3, rtol=1e-3)
    assert report.verification.passed and not any(v.name == "a4" for v in out.graph.value_info)
    fixed = pair_model()  # a model that fixes its batch at 1 is fed one row at a time
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    out, report = prune(fixed, share=1 / 3, calibrate=_rows(40, 1), verify=False)
    assert [p.kept for p in report.pairs] == [8]
    overridable = pair_model()  # weights a caller may override (initializers listed as inputs) are not constants
    overridable.graph.input.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, list(t.dims))
                                   for n, t in [("bn_v", overridable.graph.initializer[9])])
    assert find_pairs(overridable) == []
    blocked = pair_model()  # onnxruntime's own blocked-layout Conv is not an ONNX Conv
    blocked.graph.node[0].domain = "com.microsoft.nchwc"
    assert find_pairs(blocked) == []


def test_keep_layer_names_any_node_of_the_pair_and_must_name_one():
    model = pair_model()
    _, report = prune(model, share=1 / 3, calibrate=_rows(96, 1), verify=False, keep_layers=("DW",))
    assert report.pairs == []
    with pytest.raises(CollapseError, match="'nope' names no node"):
        prune(model, share=1 / 3, calibrate=_rows(96, 1), verify=False, keep_layers=("nope",))


def se_model(c=12, hidden=4, c_out=10, seed=7, gate_input="p", squeeze_bias=True) -> onnx.ModelProto:
    """x -> Conv 3x3 (c) -> HardSwish -> depthwise 3x3 -> s; s * HardSigmoid(Conv(Relu(Conv(GlobalAveragePool(s)))))
    -> Conv 1x1 (c_out): the squeeze-and-excitation block of MobileNetV3 and PP-LCNet."""
    rng = np.random.default_rng(seed)
    inits = [_init("wa", rng.normal(size=(c, 3, 3, 3)) * 0.4), _init("ba", rng.normal(size=c) * 0.1),
             _init("wd", rng.normal(size=(c, 1, 3, 3)) * 0.5),
             _init("wq", rng.normal(size=(hidden, c, 1, 1)) * 2.0), _init("bq", rng.normal(size=hidden) * 0.1),
             _init("we", rng.normal(size=(c, hidden, 1, 1)) * 2.0), _init("be", rng.normal(size=c) * 0.1),
             _init("wb", rng.normal(size=(c_out, c, 1, 1)) * 0.4)]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["a"], ["h"], name="hs"),
             helper.make_node("Conv", ["h", "wd"], ["s"], name="DW", group=c, pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
             helper.make_node("Conv", [gate_input, "wq", *(["bq"] if squeeze_bias else [])], ["q"], name="squeeze"),
             helper.make_node("Relu", ["q"], ["q2"], name="relu"),
             helper.make_node("Conv", ["q2", "we", "be"], ["e"], name="excite"),
             helper.make_node("HardSigmoid", ["e"], ["g"], name="gate", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["s", "g"], ["m"], name="scale"),
             helper.make_node("Conv", ["m", "wb"], ["y"], name="B")]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_pair_through_a_squeeze_and_excitation_branch_is_found_and_pruned_with_the_branch():
    model = se_model()
    pairs = [p for p in find_pairs(model) if p.depthwise]
    assert len(pairs) == 1
    p = pairs[0]
    node = model.graph.node
    assert [node[k].name for k in (p.producer, p.reader, *p.squeezes, *p.excites)] == ["A", "B", "squeeze", "excite"]
    assert {"we": 0, "be": 0, "wd": 0}.items() <= dict(p.sliced).items()
    assert not [q for q in find_pairs(se_model(gate_input="s")) if q.depthwise]  # unpooled: a second reader
    assert len(find_pairs(model)) == 1  # squeeze -> excite is no pair of its own: the branch belongs to A -> B
    calib = _rows(128, 3)
    out, report = prune(model, share=0.25, calibrate=calib, inputs=_rows(16, 4), atol=10.0)
    assert [(q.channels, q.kept) for q in report.pairs] == [(12, 9)]
    consts = {k: numpy_helper.to_array(v) for k, v in constant_tensors(out.graph).items()}
    assert consts["wq"].shape == (4, 9, 1, 1) and consts["we"].shape == (9, 4, 1, 1) and consts["be"].shape == (9,)
    # the removed channels' mean moved into the squeeze's bias: its output's mean over the rows is unchanged
    q_before, = _run(_with_output(model, "q"), calib, ["q"])
    q_after, = _run(_with_output(out, "q"), calib, ["q"])
    assert np.allclose(q_after.mean(axis=(0, 2, 3)), q_before.mean(axis=(0, 2, 3)), atol=1e-5)
    unbiased = se_model(squeeze_bias=False)  # a squeeze conv without a bias gets one, under a fresh name
    thin, _ = prune(unbiased, share=0.25, calibrate=calib, verify=False)
    onnx.checker.check_model(thin, full_check=True)
    q_before, = _run(_with_output(unbiased, "q"), calib, ["q"])
    q_after, = _run(_with_output(thin, "q"), calib, ["q"])
    assert np.allclose(q_after.mean(axis=(0, 2, 3)), q_before.mean(axis=(0, 2, 3)), atol=1e-5)
    # the gates of the kept channels changed, so B is refitted on the pruned model's own inputs
    tool, best, _ = _fit_errors(model, out, "m", calib)
    assert best <= tool <= 1.01 * best + 1e-9
    for conv in ("squeeze", "excite"):  # naming a branch's convolution leaves its pair whole
        assert prune(model, share=0.25, calibrate=calib, verify=False, keep_layers=(conv,))[1].pairs == []


def test_prune_with_a_reference_is_judged_against_it():
    """prune --reference: the pruned model's verification is its error against the reference (the network
    before an earlier lossy step), not against its input; an input that fails against it alone is refused."""
    original = pair_model(dup=1, c=12, seed=3)
    calib, held = _rows(200, 1), _rows(64, 2)
    first, _ = prune(original, share=0.25, calibrate=calib, verify=False)  # an earlier lossy step
    changed = float(np.abs(_run(first, held)[0] - _run(original, held)[0]).max())
    for reference, against in ((None, first), (original, original)):
        out, report = prune(first, share=0.2, calibrate=calib, inputs=held, atol=2 * changed, rtol=0.0,
                            reference=reference)
        error = float(np.abs(_run(out, held)[0] - _run(against, held)[0]).max())
        assert report.verification.outputs[0].max_abs == pytest.approx(error, rel=1e-5)
        assert ("compared with the reference model" in report.verification.inputs) == (reference is not None)
    with pytest.raises(CollapseError, match="input model itself fails verification against reference"):
        prune(first, share="auto", calibrate=calib, inputs=held, atol=0.5 * changed, rtol=0.0, reference=original)


def test_a_head_after_a_global_pool_is_a_reader_fitted_on_the_pooled_rows():
    rng = np.random.default_rng(0)
    inits = [_init("wa", rng.normal(size=(12, 3, 3, 3)) * 0.4), _init("wd", rng.normal(size=(12, 1, 3, 3)) * 0.5),
             _init("wb", rng.normal(size=(10, 12, 1, 1)) * 0.4)]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="A", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Conv", ["h", "wd"], ["s"], name="DW", group=12, pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["s"], ["p"]),
             helper.make_node("Conv", ["p", "wb"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    calib = _rows(96, 1)
    out, report = prune(model, share=0.25, calibrate=calib, verify=False)
    assert [(p.producer, p.reader, p.channels, p.kept) for p in report.pairs] == [("A", "head", 12, 9)]
    tool, best, _ = _fit_errors(model, out, "p", calib)
    assert best <= tool <= 1.05 * best  # a cross-validated ridge on 96 rows of 9 inputs: near least squares


def test_kept_channels_are_whole_vector_blocks_where_the_pair_has_them():
    from onnx_collapse.prune import kept_channels

    assert [kept_channels(480, 0.123), kept_channels(240, 0.123), kept_channels(120, 0.123)] == [416, 208, 104]
    assert kept_channels(60, 0.123) == 53  # 60 channels are no whole number of blocks: single channels
    assert kept_channels(16, 0.3) == 16 and kept_channels(32, 0.3) == 16  # at least one block
    assert kept_channels(12, 0.99) == 1
    assert kept_channels(32, 0.25) == 16 and kept_channels(32, 0.24) == 32  # half-way: a block goes (usage.md)
    assert kept_channels(10, 0.25) == 7


def test_a_pair_of_whole_blocks_is_pruned_to_whole_blocks():
    model = pair_model(dup=4, c=32)
    _, report = prune(model, share=0.3, calibrate=_rows(96, 1), verify=False)
    assert [(p.channels, p.kept) for p in report.pairs] == [(32, 16)]


def test_the_command_with_labels_keeps_a_share_within_the_accuracy_drop(tmp_path):
    model = pair_model(dup=16, c=48)  # a third of its channels copy others: pruning them loses nothing
    held = _rows(48, 2)
    truth = _run(model, held)[0].argmax(axis=-1)  # the original right on about 90 % of the units
    flip = np.random.default_rng(3).random(truth.shape) < 0.1
    truth[flip] = (truth[flip] + 1) % truth.max(initial=1)
    paths = {name: tmp_path / f"{name}.npz" for name in ("calib", "held", "labels")}
    np.savez(paths["calib"], **_rows(96, 1))
    np.savez(paths["held"], **held)
    np.savez(paths["labels"], **{model.graph.output[0].name: truth})
    src, out = tmp_path / "m.onnx", tmp_path / "pruned.onnx"
    onnx.save(model, src)
    result = cli("prune", src, out, "--calibrate", paths["calib"], "--inputs", paths["held"], "--metric", "top1", "--labels",
                 paths["labels"], "--max-drop", "0.02", "--share", "auto")
    assert result.returncode == 0, result.stderr
    accuracy = [float((_run(m, held)[0].argmax(axis=-1) == truth).mean()) for m in (model, onnx.load(out))]
    assert accuracy[0] - accuracy[1] <= 0.02
    assert constant_tensors(onnx.load(out).graph)["wb"].dims[1] == 32  # a block of channels went
    assert "share auto, tried:" in result.stdout and "accuracy" in result.stdout


def test_a_share_search_runs_the_original_once_per_pair_and_fits_as_a_lone_share_does(monkeypatch):
    pruning = importlib.import_module("onnx_collapse.prune")  # the module (onnx_collapse.prune is the function)
    model, runs = pair_model(second=True), []
    real = pruning.session

    def counted(source, what, *args, **kw):
        runs.append(what)
        return real(source, what, *args, **kw)

    monkeypatch.setattr(pruning, "session", counted)
    rows, held = _rows(96, 1), _rows(16, 2)
    out, report = prune(model, share="auto", calibrate=rows, inputs=held, metric="top1", min_agreement=0.5)
    tried = len(report.search)
    assert tried > 1 and runs.count("original model") == len(find_pairs(model))  # not once per share tried
    alone, _ = prune(model, share=report.share, calibrate=rows, inputs=held, metric="top1", min_agreement=0.5)
    assert [numpy_helper.to_array(t).tolist() for t in out.graph.initializer] == \
        [numpy_helper.to_array(t).tolist() for t in alone.graph.initializer]
