import onnx

from tests.builders import ActSpec, ChainSpec, LayerSpec, analysed, build, mlp


def test_two_layers_through_prelu_form_one_segment():
    ctx = analysed(mlp())
    assert [len(s.layers) for s in ctx.segments] == [2]


def test_slope_outside_tolerance_splits_the_chain_and_says_why():
    spec = ChainSpec(8, [LayerSpec(8), LayerSpec(8), LayerSpec(8), LayerSpec(8)],
                     [ActSpec(slope=1.0), ActSpec(slope=0.5), ActSpec(slope=0.98)])
    ctx = analysed(build(spec))
    assert [len(s.layers) for s in ctx.segments] == [2, 2]
    assert any("0.5 is not within 0.05 of 1" in r.reason for r in ctx.records)


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
