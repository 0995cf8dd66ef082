"""Read-only index over one ONNX graph: producers, consumers, constants, shapes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .io import TensorStore


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in a node's attributes (If branches, Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def node_label(node: onnx.NodeProto, position: int) -> str:
    """A node's name, or its op type and position when it has none."""
    return node.name or f"{node.op_type}#{position}"


GraphPath = tuple[tuple[int, str, int], ...]  # (node position, attribute name, graph position) from the main graph


def walk_graphs(graph: onnx.GraphProto, path: GraphPath = (), prefix: str = "") -> Iterator[tuple[GraphPath, str, onnx.GraphProto]]:
    """The graph and every subgraph inside it, with the path that locates each and a readable prefix."""
    yield path, prefix, graph
    for i, node in enumerate(graph.node):
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for k, body in enumerate(bodies):
                label = f"{prefix}{node_label(node, i)}/{attr.name}" + (f"[{k}]" if len(bodies) > 1 else "")
                yield from walk_graphs(body, path + ((i, attr.name, k),), label + "/")


def locate(graph: onnx.GraphProto, path: GraphPath) -> onnx.GraphProto:
    """The subgraph of ``graph`` at ``path`` (see walk_graphs)."""
    for i, name, k in path:
        attr = next(a for a in graph.node[i].attribute if a.name == name)
        graph = attr.g if attr.type == onnx.AttributeProto.GRAPH else attr.graphs[k]
    return graph


def outer_names_used(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes (not produced inside it)."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for sub in subgraphs(node):
            used |= outer_names_used(sub)
        local.update(node.output)
    used.update(o.name for o in graph.output)
    return used - local


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node, or None for forms we do not read (sparse, strings)."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
    return None


class GraphIndex:
    """Who produces and who consumes each tensor of ``graph``, and which tensors are constants.

    Nodes are referred to by their position in ``graph.node`` (``nodes[i]``), which stays valid
    because analysis never edits the graph.
    """

    def __init__(self, graph: onnx.GraphProto, shapes: dict[str, list[int | None]] | None = None,
                 store: TensorStore | None = None, prefix: str = ""):
        self.graph = graph
        self.store = store or TensorStore(None)
        self.prefix = prefix  # where this graph sits, e.g. "If_0/then_branch/" ("" for the main graph)
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = i
            used = {n for n in node.input if n}
            for sub in subgraphs(node):
                used |= outer_names_used(sub)
            for name in used:
                self.consumers[name].append(i)
        self.shapes = shapes or {}
        self._constants: dict[str, np.ndarray | None] = {}

    def label(self, i: int) -> str:
        """A readable name for node ``i``: its name, or op type and position when unnamed."""
        return self.prefix + node_label(self.nodes[i], i)

    def _constant_tensor(self, name: str) -> onnx.TensorProto | None:
        if name in self.initializers and name not in self.graph_inputs:
            return self.initializers[name]
        if name in self.producer and self.nodes[self.producer[name]].op_type == "Constant":
            node = self.nodes[self.producer[name]]
            return next((a.t for a in node.attribute if a.name == "value" and a.type == a.TENSOR), None)
        return None

    def constant_meta(self, name: str) -> tuple[tuple[int, ...], np.dtype | None] | None:
        """Shape and dtype of a constant without reading its data (dtype None if numpy has none)."""
        tensor = self._constant_tensor(name)
        if tensor is None:
            value = self.constant(name) if self.is_constant(name) else None
            return None if value is None else (value.shape, value.dtype)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except (KeyError, TypeError, ValueError):
            dtype = None
        return tuple(tensor.dims), dtype

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is fixed at load time (initializer or Constant node), else None.

        An initializer that is also a graph input can be overridden by the caller, so it is not constant.
        Values are read on demand (external data from disk); only small ones are cached.
        """
        if name in self._constants:
            return self._constants[name]
        tensor = self._constant_tensor(name)
        if tensor is not None:
            value = self.store.read(tensor)
        elif name in self.producer and self.nodes[self.producer[name]].op_type == "Constant":
            value = constant_node_value(self.nodes[self.producer[name]])
        else:
            value = None
        if value is None or value.nbytes <= 65536:
            self._constants[name] = value
        return value

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return name not in self.graph_inputs
        return name in self.producer and self.nodes[self.producer[name]].op_type == "Constant"

    def sole_consumer(self, name: str) -> int | None:
        """The only node reading ``name``, or None if it has several readers or is a graph output."""
        if name in self.graph_outputs:
            return None
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 else None

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)



def default_opset(model: onnx.ModelProto) -> int:
    """The model's version of the default ONNX operator set (0 if it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def attribute(node: onnx.NodeProto, name: str, default=None):
    """An attribute's Python value, or ``default`` when absent."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def infer_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Static shapes of the main graph's tensors, from onnx shape inference where it succeeds.

    Runs on a copy without weight data, so it costs no extra weight memory; unknown dims are None.
    """
    skeleton = onnx.ModelProto()
    _copy_without_weight_data(model, skeleton)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False)
    except Exception:  # noqa: BLE001 - shape inference is best effort; callers treat missing shapes as unknown
        inferred = skeleton
    shapes: dict[str, list[int | None]] = {}
    g = inferred.graph
    for info in list(g.input) + list(g.output) + list(g.value_info):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def _copy_without_weight_data(model: onnx.ModelProto, into: onnx.ModelProto) -> None:
    """Copy ``model`` into ``into``, turning large initializers into graph inputs of the same type.

    Small initializers (shapes for Reshape, axes) stay, since shape inference reads their values.
    """
    graph = model.graph
    into.ir_version = model.ir_version
    into.opset_import.extend(model.opset_import)
    into.functions.extend(model.functions)
    g = into.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    declared = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if tensor.ByteSize() <= 4096:
            g.initializer.append(tensor)
        elif tensor.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
