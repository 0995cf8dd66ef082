import numpy as np
import onnx

from onnx_collapse.graph import infer_shapes
from onnx_collapse.kinds import Identity, Slope
from tests.builders import ActSpec, ChainSpec, LayerSpec, analysed, build, mlp


def test_two_layers_through_prelu_form_one_segment():
    ctx = analysed(mlp())
    assert [len(s.layers) for s in ctx.segments] == [2]


def test_slope_outside_tolerance_splits_the_chain_and_says_why():
    spec = ChainSpec(8, [LayerSpec(8), LayerSpec(8), LayerSpec(8), LayerSpec(8)],
                     [ActSpec(slope=1.0), ActSpec(slope=0.5), ActSpec(slope=0.98)])
    ctx = analysed(build(spec))
    assert [len(s.layers) for s in ctx.segments] == [2, 2]
    assert any("0.5 is not within 0.05 of 1" in c.shown.reason for c in ctx.candidates)


def test_tensor_with_two_readers_ends_the_chain():
    model = mlp()
    model.graph.output.append(onnx.helper.make_tensor_value_info("l0", 1, None))
    ctx = analysed(model)
    assert ctx.segments == [] and any("is a model output" in n for n in ctx.stops.values())


def test_two_activations_in_a_row_both_near_identity_fold():
    model = mlp()
    prelu = next(n for n in model.graph.node if n.op_type == "PRelu")
    model.graph.node.insert(2, onnx.helper.make_node("LeakyRelu", ["a0"], ["a0b"], name="leaky", alpha=1.0))
    next(n for n in model.graph.node if n.name == "fc1").input[0] = "a0b"
    ctx = analysed(model)
    assert prelu.output[0] == "a0" and len(ctx.segments) == 1 and len(ctx.segments[0].links[0]) == 2


def test_links_say_what_they_do_and_where_the_features_go():
    model = build(ChainSpec(8, [LayerSpec(16), LayerSpec(4)], [ActSpec(dropout=True, slope=0.98)]))
    (segment,) = analysed(model).segments
    drop, act = segment.links[0]
    assert isinstance(drop.map, Identity) and isinstance(act.map, Slope)
    assert np.isclose(act.map.deviation, 0.02) and np.allclose(act.map.span, (0.98, 0.98))
    assert drop.after.data == model.graph.node[drop.node].output[0] == model.graph.node[act.node].input[0]
    assert (act.after.width, act.after.axis, act.after.shape, act.after.dtype) == (16, -1, (None, 16), np.float32)


def test_sites_carry_the_dtype_inference_found_else_the_layers():
    float16 = build(ChainSpec(8, [LayerSpec(16), LayerSpec(4)], [ActSpec()], dtype=np.float16))
    (segment,) = analysed(float16).segments
    assert segment.links[0][0].after.dtype == np.float16
    inferred = infer_shapes(float16)
    assert inferred.dtypes["l0"] == np.float16 and inferred["l0"] == [None, 16] and isinstance(inferred, dict)
