"""The graph layer: what onnx-graphsurgeon's export drops is carried over, and rewrites use the library."""

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_collapse import optimize
from onnx_collapse.graph import GraphView, import_model, imported_proto
from tests.builders import mlp, run_model


def _decorated_model() -> onnx.ModelProto:
    """An MLP with everything a round trip through onnx-graphsurgeon 0.6.1 loses, plus an untouched branch."""
    model = mlp()
    onnx.helper.set_model_props(model, {"class_labels": "cat,dog", "exporter": "torch"})
    model.doc_string = "model doc"
    model.domain = "ai.example"
    model.model_version = 7
    graph = model.graph
    graph.doc_string = "graph doc"
    graph.input[0].doc_string = "input doc"
    # an untouched node with metadata and a doc string: y2 = x * scale (scale is an overridable initializer)
    graph.initializer.append(onnx.numpy_helper.from_array(np.full((1, 8), 2.0, np.float32), "scale"))
    graph.input.append(onnx.helper.make_tensor_value_info("scale", onnx.TensorProto.FLOAT, [1, 8]))
    mul = onnx.helper.make_node("Mul", ["x", "scale"], ["y2"], name="scaler", doc_string="node doc")
    entry = mul.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", "['', 'scaler']"
    graph.node.append(mul)
    graph.output.append(onnx.helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, ["batch", 8]))
    graph.value_info.append(onnx.helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, ["batch", 8]))
    graph.value_info.append(onnx.helper.make_empty_tensor_value_info("a0"))
    onnx.checker.check_model(model)
    return model


def test_fold_keeps_metadata_doc_strings_value_info_and_overridable_initializers():
    model = _decorated_model()
    out, report = optimize(model)
    assert len(report.folded) == 1
    assert {p.key: p.value for p in out.metadata_props} == {"class_labels": "cat,dog", "exporter": "torch"}
    assert (out.doc_string, out.domain, out.model_version) == ("model doc", "ai.example", 7)
    assert out.graph.doc_string == "graph doc" and out.graph.input[0].doc_string == "input doc"
    assert [i.name for i in out.graph.input] == ["x", "scale"]  # the overridable weight is still an input
    scaler = next(n for n in out.graph.node if n.name == "scaler")
    assert scaler.doc_string == "node doc" and scaler.metadata_props[0].value == "['', 'scaler']"
    assert "y2" in {v.name for v in out.graph.value_info}
    assert not any(n.op_type == "PRelu" for n in out.graph.node)
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    scale = np.full((1, 8), 3.0, np.float32)  # fed by the caller: must still override the initializer
    for got, want in zip(run_model(out, x=x, scale=scale), run_model(model, x=x, scale=scale)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_untouched_initializer_keeps_its_bytes_and_order():
    model = _decorated_model()
    out, _ = optimize(model)
    before = {t.name: t.SerializeToString() for t in model.graph.initializer}
    kept = [t for t in out.graph.initializer if t.name in before]
    assert [t.name for t in kept] == ["scale"]
    assert kept[0].SerializeToString() == before["scale"]


def test_dead_nodes_left_by_a_fold_are_removed_by_the_library_cleanup():
    model = mlp()
    # the slope reaches the PRelu through an Identity (TorchScript's constant sharing)
    prelu = next(n for n in model.graph.node if n.op_type == "PRelu")
    model.graph.node.insert(0, onnx.helper.make_node("Identity", [prelu.input[1]], ["slope_shared"], name="share"))
    prelu.input[1] = "slope_shared"
    out, report = optimize(model)
    assert len(report.folded) == 1
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    assert {t.name for t in out.graph.initializer}.isdisjoint({"s0", "w0", "w1"})


def test_an_imported_constant_gives_its_proto_without_loading_its_values():
    """graph.imported_proto reads onnx-graphsurgeon's private Constant._values: this fails if that changes."""
    model = mlp()
    weight = model.graph.initializer[0]
    imported = import_model(model)
    constant = imported.graph.tensors()[weight.name]
    proto = imported_proto(constant)
    assert proto is not None and proto.SerializeToString() == weight.SerializeToString()
    view = GraphView(imported.graph, model.graph)
    assert view.constant_proto(weight.name).SerializeToString() == weight.SerializeToString()
    assert imported_proto(constant) is not None  # asking did not load the values
    loaded = constant.values  # the library's public accessor reads them into numpy and keeps them
    assert np.array_equal(loaded, numpy_helper.to_array(weight))
    assert imported_proto(constant) is None  # the values are numpy now, not the proto
