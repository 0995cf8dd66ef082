"""Conv layers: every fold rule against the float64 composition in onnxruntime, and each refusal's reason."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_collapse import optimize
from onnx_collapse.kinds.layers.conv import ConvEmission
from onnx_collapse.layout import ConvLayout, Windows

RNG = np.random.default_rng(0)


def conv_chain(specs, c_in=3, size=(9, 9), slope=1.0, bn=False, opset=17):
    """x -> Conv -> [BatchNormalization] -> PRelu(slope, per channel [C,1,1]) -> Conv ... (specs: dicts with
    c_out, kernel and optional strides/pads/dilations/auto_pad/bias/group)."""
    nodes, inits, cur, channels = [], [], "x", c_in
    spatial = len(size)
    for k, spec in enumerate(specs):
        kernel = spec["kernel"]
        group = spec.get("group", 1)
        w = RNG.standard_normal((spec["c_out"], channels // group, *kernel)) / np.sqrt(channels * np.prod(kernel))
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{k}"))
        inputs = [cur, f"w{k}"]
        if spec.get("bias", True):
            inits.append(numpy_helper.from_array(RNG.standard_normal(spec["c_out"]).astype(np.float32) * 0.1, f"b{k}"))
            inputs.append(f"b{k}")
        attrs = {key: spec[key] for key in ("strides", "pads", "dilations", "auto_pad") if key in spec}
        nodes.append(helper.make_node("Conv", inputs, [f"c{k}"], name=f"conv{k}", group=group, **attrs))
        cur, channels = f"c{k}", spec["c_out"]
        if k < len(specs) - 1:
            if bn:
                stats = [RNG.uniform(0.5, 1.5, channels), RNG.standard_normal(channels) * 0.1,
                         RNG.standard_normal(channels) * 0.1, RNG.uniform(0.5, 2, channels)]
                names = [f"bn{k}_{j}" for j in range(4)]
                inits += [numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip(stats, names)]
                nodes.append(helper.make_node("BatchNormalization", [cur, *names], [f"n{k}"], name=f"bn{k}"))
                cur = f"n{k}"
            inits.append(numpy_helper.from_array(np.full((channels, *[1] * spatial), slope, np.float32), f"s{k}"))
            nodes.append(helper.make_node("PRelu", [cur, f"s{k}"], [f"a{k}"], name=f"act{k}"))
            cur = f"a{k}"
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c_in, *size])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [None] * (2 + spatial))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _check_folds_exactly(model, size=(9, 9), c_in=3):
    out, report = optimize(model)
    assert [f.status for f in report.folds] == ["folded"], report.folds[0].reason
    assert sum(n.op_type == "Conv" for n in out.graph.node) == 1 and not any(n.op_type == "PRelu" for n in out.graph.node)
    x = RNG.standard_normal((5, c_in, *size)).astype(np.float32)  # a batch the verifier did not use
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-4, atol=1e-5)
    assert report.after.params < report.before.params
    return report


@pytest.mark.parametrize("first", [
    {"c_out": 16, "kernel": [3, 3], "pads": [1, 1, 1, 1]},
    {"c_out": 16, "kernel": [3, 3], "strides": [2, 2]},
    {"c_out": 16, "kernel": [3, 3], "dilations": [2, 2], "pads": [2, 1, 2, 1]},
    {"c_out": 16, "kernel": [3, 3], "auto_pad": "SAME_UPPER"},
    {"c_out": 16, "kernel": [2, 2], "auto_pad": "SAME_LOWER"},
])
@pytest.mark.parametrize("stride2", [1, 2])
def test_kxk_then_1x1_is_one_kxk(first, stride2):
    _check_folds_exactly(conv_chain([first, {"c_out": 4, "kernel": [1, 1], "strides": [stride2, stride2]}]))


@pytest.mark.parametrize("second", [
    {"c_out": 4, "kernel": [3, 3]},
    {"c_out": 4, "kernel": [3, 3], "strides": [2, 2], "dilations": [2, 2]},
    {"c_out": 4, "kernel": [3, 3], "pads": [1, 1, 1, 1], "bias": True},
])
def test_1x1_then_kxk_is_one_kxk(second):
    padded = "pads" in second
    model = conv_chain([{"c_out": 16, "kernel": [1, 1], "bias": not padded}, second])
    _check_folds_exactly(model)


def test_1x1_with_bias_then_padded_kxk_is_refused_with_the_reason():
    model = conv_chain([{"c_out": 16, "kernel": [1, 1]}, {"c_out": 4, "kernel": [3, 3], "pads": [1, 1, 1, 1]}])
    _, report = optimize(model)
    assert report.folds[0].status == "skipped" and "zero padding" in report.folds[0].reason


def test_kxk_then_kxk_merges_into_a_larger_kernel_when_smaller():
    model = conv_chain([{"c_out": 32, "kernel": [3, 3], "pads": [1, 1, 1, 1]}, {"c_out": 3, "kernel": [3, 3]}])
    out, _ = optimize(model)
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert list(helper.get_attribute_value(next(a for a in conv.attribute if a.name == "kernel_shape"))) == [5, 5]
    _check_folds_exactly(model)


def test_kxk_then_kxk_that_would_grow_is_left_alone():
    model = conv_chain([{"c_out": 4, "kernel": [3, 3]}, {"c_out": 16, "kernel": [3, 3]}], c_in=16)
    _, report = optimize(model)
    assert report.folds[0].status == "skipped" and "no smaller form" in report.folds[0].reason


def test_three_layers_with_batchnorm_between_fold_into_one():
    specs = [{"c_out": 16, "kernel": [3, 3], "pads": [1, 1, 1, 1]}, {"c_out": 16, "kernel": [1, 1]},
             {"c_out": 4, "kernel": [1, 1]}]
    report = _check_folds_exactly(conv_chain(specs, bn=True))
    assert len(report.folds[0].layers) == 3


@pytest.mark.parametrize("size,kernel", [((17,), [5]), ((6, 6, 6), [3, 3, 3])])
def test_1d_and_3d_convolutions_fold(size, kernel):
    spatial = len(size)
    specs = [{"c_out": 12, "kernel": kernel, "pads": [1] * 2 * spatial}, {"c_out": 2, "kernel": [1] * spatial}]
    _check_folds_exactly(conv_chain(specs, size=size), size=size)


def test_grouped_convolution_is_left_alone_with_the_reason():
    model = conv_chain([{"c_out": 6, "kernel": [3, 3], "group": 3}, {"c_out": 2, "kernel": [1, 1]}])
    _, report = optimize(model)
    assert report.folded == [] and any("group=3" in u.reason for u in report.unfolded)


def test_same_padding_with_stride_2_is_left_alone_with_the_reason():
    model = conv_chain([{"c_out": 6, "kernel": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
                        {"c_out": 2, "kernel": [1, 1]}])
    _, report = optimize(model)
    assert report.folded == [] and any("stride > 1" in u.reason for u in report.unfolded)


def test_slope_far_from_one_is_not_folded():
    model = conv_chain([{"c_out": 8, "kernel": [3, 3]}, {"c_out": 2, "kernel": [1, 1]}], slope=0.5)
    _, report = optimize(model)
    assert report.folded == [] and "slope 0.5" in report.folds[0].reason


def _run_nodes(nodes, inits, x):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return _run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), x)


def test_factor_and_grouped_emissions_compute_their_matrices():
    rng = np.random.default_rng(1)
    kernel, c_in, c_out, rank, groups = (3, 3), 4, 5, 3, 2
    emission = ConvEmission("p", 1, ConvLayout(4, window=Windows(kernel, (1, 1), (1, 1, 1, 1), (1, 1))))
    names = iter(range(100))
    fresh = lambda b: f"{b}_{next(names)}"  # noqa: E731
    x = rng.standard_normal((2, c_in, 7, 7)).astype(np.float32)
    a, b, bias = rng.standard_normal((c_in * 9, rank)), rng.standard_normal((rank, c_out)), rng.standard_normal(c_out)
    dense = emission.linear(fresh, "x", "y", [a @ b], bias, np.float32)
    pair = emission.linear(fresh, "x", "y", [a, b], bias, np.float32)
    np.testing.assert_allclose(_run_nodes(*pair, x), _run_nodes(*dense, x), rtol=1e-4, atol=1e-4)
    blocks = rng.standard_normal((groups, c_in // groups * 9, rank))
    second = rng.standard_normal((groups * rank, c_out))
    grouped = emission.grouped(fresh, "x", "y", blocks, second, bias, np.float32)
    full = np.concatenate([blocks[g] @ second[g * rank:(g + 1) * rank] for g in range(groups)], axis=0)
    reference = emission.linear(fresh, "x", "y", [full], bias, np.float32)
    np.testing.assert_allclose(_run_nodes(*grouped, x), _run_nodes(*reference, x), rtol=1e-4, atol=1e-4)


def test_macs_count_every_output_position_when_the_shape_is_known():
    model = conv_chain([{"c_out": 16, "kernel": [3, 3], "strides": [2, 2]}, {"c_out": 4, "kernel": [1, 1]}])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # 9x9 input -> 4x4 output positions
    out, report = optimize(model)
    assert report.before.linear_macs == (16 * 3 * 9 + 4 * 16) * 16
    assert report.after.linear_macs == report.folds[0].macs_after == 4 * 3 * 9 * 16


def test_budget_in_macs_weighs_convolutions_by_their_output_size():
    specs = [{"c_out": 8, "kernel": [3, 3], "pads": [1, 1, 1, 1]}, {"c_out": 8, "kernel": [3, 3], "strides": [3, 3]}]
    model = conv_chain(specs, c_in=8, slope=0.5)  # nothing folds: two separate low-rank targets
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    _, by_macs = optimize(model, rank_budget=0.5, low_rank="all", budget_metric="macs", verify=False)
    total = sum(f.macs_before for f in by_macs.folds if f.form)
    kept = sum(f.macs_after if f.status == "folded" else f.macs_before for f in by_macs.folds if f.form)
    assert kept <= 0.5 * total  # the budget holds as MACs per image
    first = next(f for f in by_macs.folds if f.layers == ["conv0"])
    assert first.macs_before == 8 * 8 * 9 * 81  # 9x9 output positions
