import onnx

from tests.builders import ActSpec, ChainSpec, LayerSpec, analysed, build


def _dropout_model():
    return build(ChainSpec(8, [LayerSpec(8), LayerSpec(4)], [ActSpec(dropout=True)]))


def test_dropout_and_identity_are_transparent_links_in_a_row():
    model = _dropout_model()
    model.graph.node.insert(1, onnx.helper.make_node("Identity", ["l0"], ["l0_id"], name="id0"))
    model.graph.node[2].input[0] = "l0_id"
    ctx = analysed(model)
    (segment,) = ctx.segments
    assert [link.kind.name for link in segment.links[0]] == ["transparent", "transparent", "activation"]


def test_dropout_in_training_mode_is_not_transparent():
    model = _dropout_model()
    model.graph.initializer.append(onnx.numpy_helper.from_array(__import__("numpy").array(True), "train"))
    drop = next(n for n in model.graph.node if n.op_type == "Dropout")
    drop.input.extend(["", "train"])
    model.opset_import[0].version = 17
    ctx = analysed(model)
    assert ctx.segments == [] and any("training mode" in n for n in ctx.stops.values())


def test_dropout_whose_mask_is_a_graph_output_is_not_transparent():
    model = _dropout_model()
    drop = next(n for n in model.graph.node if n.op_type == "Dropout")
    drop.output.append("mask")
    model.graph.output.append(onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.BOOL, None))
    ctx = analysed(model)
    assert ctx.segments == [] and any("mask" in n for n in ctx.stops.values())
