"""The graph layer: onnx-graphsurgeon graphs, read through our own weight store, exported without loss.

onnx-graphsurgeon owns producers/consumers, subgraphs and outer-scope tensors, node insertion and
removal, cleanup and topological order. What it does not do is kept here:

- weight values are read through :class:`~onnx_collapse.io.TensorStore` (external data relative to the
  model's folder, memory-mapped); an imported constant keeps its TensorProto, so nothing is read at import;
- ``export`` puts back what onnx-graphsurgeon 0.6.1 drops: model and node ``metadata_props`` and
  ``doc_string``, ``value_info`` it cannot type, initializers that are also graph inputs (overridable
  weights), the original input/output declarations, model-local functions and opset imports.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from .errors import CollapseError, one_line
from .io import TensorStore, copy_fields

gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # its warnings are about its own round trip, not the user

GraphPath = tuple[tuple[int, str], ...]  # (node position, attribute name) from the main graph down to a subgraph


@dataclass
class Imported:
    """A model imported into onnx-graphsurgeon, with the protos each graph and node came from."""

    model: onnx.ModelProto
    graph: gs.Graph
    # id(object) -> (object, proto); holding the object keeps its id from being reused by a new one
    graph_protos: dict[int, tuple[gs.Graph, onnx.GraphProto]] = field(default_factory=dict)
    node_protos: dict[int, tuple[gs.Node, onnx.NodeProto]] = field(default_factory=dict)

    def proto_of(self, item: gs.Graph | gs.Node):
        """The proto ``item`` was imported from, or None for a graph or node made since."""
        entry = (self.graph_protos if isinstance(item, gs.Graph) else self.node_protos).get(id(item))
        return entry[1] if entry is not None and entry[0] is item else None


def import_model(model: onnx.ModelProto) -> Imported:
    """Import ``model`` (weights stay where they are: constants keep their TensorProto)."""
    try:
        graph = gs.import_onnx(model)
    except Exception as exc:  # noqa: BLE001 - the library raises assorted types on models it cannot represent
        raise CollapseError(f"the model cannot be read as a graph (onnx-graphsurgeon: {type(exc).__name__}: "
                            f"{one_line(exc, 200)})") from None
    imported = Imported(model, graph)
    _pair(imported, imported.graph, model.graph)
    return imported


def _pair(imported: Imported, graph: gs.Graph, proto: onnx.GraphProto) -> None:
    imported.graph_protos[id(graph)] = (graph, proto)
    for node, node_proto in zip(graph.nodes, proto.node):
        imported.node_protos[id(node)] = (node, node_proto)
        for attr in node_proto.attribute:
            if attr.type == onnx.AttributeProto.GRAPH and isinstance(node.attrs.get(attr.name), gs.Graph):
                _pair(imported, node.attrs[attr.name], attr.g)


def walk_graphs(graph: gs.Graph, path: GraphPath = (), prefix: str = "") -> Iterator[tuple[GraphPath, str, gs.Graph]]:
    """The graph and every subgraph inside it, with the path that locates each and a readable prefix."""
    yield path, prefix, graph
    for i, node in enumerate(graph.nodes):
        for name, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                label = f"{prefix}{node_label(node, i)}/{name}/"
                yield from walk_graphs(value, path + ((i, name),), label)


def locate(graph: gs.Graph, path: GraphPath) -> gs.Graph:
    """The subgraph of ``graph`` at ``path`` (see walk_graphs)."""
    for i, name in path:
        graph = graph.nodes[i].attrs[name]
    return graph


def node_label(node: gs.Node, position: int) -> str:
    """A node's name, or its op type and position when it has none."""
    return node.name or f"{node.op}#{position}"


def module_path(node: onnx.NodeProto) -> str | None:
    """The torch module a node was exported from, from its metadata (dynamo's ``pkg.torch.onnx.name_scopes``
    or ``namespace``), or None."""
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = [n for n in ast.literal_eval(scopes) if isinstance(n, str) and n]
        except (ValueError, SyntaxError):
            names = []
        if len(names) >= 2:
            return names[-2]  # the last entry names the op itself ("linear"), the one before its module
    namespace = meta.get("namespace", "")
    modules = [part.split(":")[0].strip() for part in namespace.split("/")
               if ":" in part and not part.split(":", 1)[1].strip().startswith(("aten.", "<built-in"))]
    return modules[-1] if modules and modules[-1] else None


def default_opset(model: onnx.ModelProto) -> int:
    """The model's version of the default ONNX operator set (0 if it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def is_default_domain(node: gs.Node) -> bool:
    return node.domain in (None, "", "ai.onnx")


def np_dtype(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type, or None where numpy has none."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


# element types whose tensors count as parameters (bfloat16 too: stored weights, unlike the layers kinds fold)
FLOAT_TENSOR_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def weight_count(tensor: onnx.TensorProto) -> int:
    """Elements of a stored tensor that count as parameters: floating-point ones (not shapes or indices)."""
    return int(np.prod(tensor.dims, dtype=np.int64)) if tensor.data_type in FLOAT_TENSOR_TYPES else 0


def imported_proto(constant: gs.Constant) -> onnx.TensorProto | None:
    """The dense TensorProto ``constant`` was imported from while its values are still unread, else None
    (values set or loaded since, or a sparse tensor: sparse weights stay as they are).

    The one place that reads onnx-graphsurgeon's private state: it has no public way to reach the proto.
    ``Constant.values`` loads the data into numpy (and keeps it), so this reads ``Constant._values``, which
    is a ``gs.ir.tensor.LazyValues`` holding the proto (``.tensor``) until then. tests/test_graph.py checks
    this against the installed onnx-graphsurgeon and fails if that changes."""
    values = constant._values
    if isinstance(values, gs.ir.tensor.LazyValues) and not isinstance(values, gs.ir.tensor.SparseValues):
        return values.tensor
    return None


class GraphView:
    """One onnx-graphsurgeon graph as the passes see it: nodes by position, constants read lazily.

    ``overridable`` are initializers that are also graph inputs: a caller may feed them, so they are
    not constants. ``shapes`` are static shapes by tensor name (main graph only; ``dtypes`` their element
    types where ``shapes`` came from ``infer_shapes``, see ``dtype()``); ``measured`` shapes of
    one run on ``batch`` samples (``macs.measure``), read only to count costs, never to decide a fold.
    """

    def __init__(self, graph: gs.Graph, proto: onnx.GraphProto, store: TensorStore | None = None,
                 shapes: dict[str, list[int | None]] | None = None, prefix: str = "",
                 measured: dict[str, tuple[int, ...]] | None = None, batch: int = 1):
        self.graph = graph
        self.proto = proto
        self.store = store or TensorStore(None)
        self.shapes = shapes or {}
        self.dtypes: dict[str, np.dtype] = getattr(shapes, "dtypes", None) or {}  # infer_shapes' element types
        self.measured = measured or {}
        self.batch = batch
        self.static_batch = fixed_batch(proto)
        self.prefix = prefix  # where this graph sits, e.g. "If_0/then_branch/" ("" for the main graph)
        self.nodes: list[gs.Node] = list(graph.nodes)
        self.position = {id(node): i for i, node in enumerate(self.nodes)}
        self.tensors = graph.tensors()
        self.output_names = {t.name for t in graph.outputs}
        self.overridable = {t.name for t in proto.initializer} & {i.name for i in proto.input}
        self._values: dict[str, np.ndarray | None] = {}

    def label(self, i: int) -> str:
        """A readable name for node ``i``: the module path the exporter recorded (``blocks.3.mlp.fc1``), else
        its name, else its op type and position."""
        path = module_path(self.proto.node[i]) if i < len(self.proto.node) else None
        return self.prefix + (path or node_label(self.nodes[i], i))

    def tensor(self, name: str) -> gs.Tensor | None:
        return self.tensors.get(name)

    def readers(self, name: str) -> list[gs.Node]:
        """Every node reading ``name``, subgraph nodes reading it from the outer scope included."""
        tensor = self.tensor(name)
        return [] if tensor is None else list(tensor.outputs)

    def sole_reader(self, name: str) -> int | None:
        """Position of the only node reading ``name``, or None if it has several readers, a reader in a
        subgraph, or is a graph output."""
        if name in self.output_names:
            return None
        readers = self.readers(name)
        if len(readers) != 1:
            return None
        return self.position.get(id(readers[0]))

    def producer(self, name: str) -> gs.Node | None:
        tensor = self.tensor(name)
        return tensor.inputs[0] if tensor is not None and tensor.inputs else None

    def constant_proto(self, name: str) -> onnx.TensorProto | None:
        """The TensorProto holding ``name``'s value if it is fixed at load time, else None.

        Initializers (not overridable), ``Constant`` nodes with a tensor value, and ``Identity`` of
        either (exporters share one constant between several readers that way) all count.
        """
        seen = 0
        while seen < 64:
            tensor = self.tensor(name)
            if isinstance(tensor, gs.Constant):
                return None if name in self.overridable else imported_proto(tensor)
            node = self.producer(name)
            if node is None or not is_default_domain(node):
                return None
            if node.op == "Constant":
                value = node.attrs.get("value")
                return imported_proto(value) if isinstance(value, gs.Constant) else None
            if node.op != "Identity" or not node.inputs:
                return None
            name = node.inputs[0].name
            seen += 1
        return None

    def is_constant(self, name: str) -> bool:
        return self.constant_proto(name) is not None or self._scalar_constant(name) is not None

    def constant_meta(self, name: str) -> tuple[tuple[int, ...], np.dtype | None] | None:
        """Shape and dtype of a constant without reading its data (dtype None if numpy has none)."""
        proto = self.constant_proto(name)
        if proto is not None:
            return tuple(proto.dims), np_dtype(proto.data_type)
        value = self._scalar_constant(name)
        return None if value is None else (value.shape, value.dtype)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is a constant, else None; read on demand (external data from
        disk, memory-mapped), only small values cached."""
        if name in self._values:
            return self._values[name]
        proto = self.constant_proto(name)
        value = self.store.read(proto) if proto is not None else self._scalar_constant(name)
        if value is None or value.nbytes <= 65536:
            self._values[name] = value
        return value

    def _scalar_constant(self, name: str) -> np.ndarray | None:
        """A ``Constant`` node's value_float / value_floats form."""
        node = self.producer(name)
        if node is None or node.op != "Constant" or not is_default_domain(node):
            return None
        if "value_float" in node.attrs:
            return np.array(node.attrs["value_float"], dtype=np.float32)
        if "value_floats" in node.attrs:
            return np.array(list(node.attrs["value_floats"]), dtype=np.float32)
        return None

    def constant_identity(self, name: str) -> tuple[object, int] | None:
        """(key, elements) of the stored tensor behind constant ``name``: names that share one stored tensor
        (through Identity) share the key, so the tensor is counted once."""
        proto = self.constant_proto(name)
        if proto is not None:
            return id(proto), weight_count(proto)
        value = self._scalar_constant(name)
        return None if value is None else (name, int(value.size))

    def as_initializer(self, name: str) -> onnx.TensorProto | None:
        """A TensorProto named ``name`` holding the constant's value (data not read where external)."""
        proto = self.constant_proto(name)
        if proto is None:
            value = self._scalar_constant(name)
            return None if value is None else onnx.numpy_helper.from_array(value, name)
        copy = onnx.TensorProto()
        copy.CopyFrom(proto)
        copy.name = name
        return copy

    def standalone(self, positions) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """The nodes at ``positions`` and the constants they read (as initializers), to run them as a model."""
        nodes = [self.proto.node[i] for i in positions]
        produced = {n for node in nodes for n in node.output}
        consts = sorted({n for node in nodes for n in node.input if n and n not in produced and self.is_constant(n)})
        return nodes, [self.as_initializer(n) for n in consts]

    def dtype(self, name: str) -> np.dtype | None:
        """The element type of tensor ``name``: from shape inference, else as declared (value_info, the
        graph's inputs and outputs, a constant's value); None where neither says."""
        found = self.dtypes.get(name)
        if found is not None:
            return found
        meta = self.constant_meta(name)
        if meta is not None:
            return meta[1]
        tensor = self.tensor(name)
        declared = None if tensor is None or isinstance(tensor, gs.Constant) else tensor.dtype
        if declared is None:
            return None
        if isinstance(declared, int):
            return np_dtype(declared)
        try:
            return np.dtype(declared)
        except TypeError:
            return None

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def positions(self, name: str, axis: int) -> int | None:
        """Positions per sample of tensor ``name`` with its features on ``axis``: its elements per sample
        over its features (see ``sized``); None where its size is unknown."""
        found = sized(self.shapes.get(name), self.measured.get(name), self.static_batch, self.batch)
        if found is None or len(found[0]) < 2 or not found[0][axis]:
            return None
        return max(1, int(elements_per_sample(*found)) // found[0][axis])



def sized(static, measured, static_batch: int | None, batch: int) -> tuple[tuple, int | None] | None:
    """A tensor's shape for counting costs, and how many samples it holds (None: its axis 0 is the batch):
    the static shape where every dim and the graph's batch (``static_batch``) are fixed, else the shape
    ``measured`` in a run on ``batch`` samples, else the static shape if known past axis 0."""
    if static is not None and None not in static and static_batch is not None:
        return tuple(static), static_batch
    if measured is not None:
        return tuple(measured), batch
    if static is not None and len(static) and None not in list(static)[1:]:
        return tuple(static), None
    return None


def elements_per_sample(shape: tuple, samples: int | None) -> float:
    """Elements of a tensor of ``shape`` holding ``samples`` samples (None: axis 0 is the batch), per sample."""
    if samples is None or shape[0] is None:
        return float(np.prod(shape[1:], dtype=np.int64))
    return float(np.prod(shape, dtype=np.int64)) / samples


def fixed_batch(graph: onnx.GraphProto) -> int | None:
    """Axis 0 of the graph's first input that a caller feeds, where the graph fixes it."""
    stored = {t.name for t in graph.initializer}
    info = next((i for i in graph.input if i.name not in stored), None)
    dims = info.type.tensor_type.shape.dim if info is not None else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def attribute(node: gs.Node, name: str, default=None):
    """A node attribute's value, or ``default`` when absent."""
    return node.attrs.get(name, default)


def add_nodes(graph: gs.Graph, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto],
              tensors: dict[str, gs.Tensor]) -> None:
    """Append ``nodes`` (with their new ``initializers``) to ``graph``, wired to existing tensors by name.

    ``tensors`` maps names visible in ``graph`` (its own and its outer scopes') to tensors; new names
    become new tensors. The caller toposorts afterwards.
    """
    for init in initializers:
        tensors[init.name] = gs.Constant(init.name, gs.ir.tensor.LazyValues(init))

    def get(name: str) -> gs.Tensor:
        if name not in tensors:
            tensors[name] = gs.Variable(name)
        return tensors[name]

    for proto in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        graph.nodes.append(gs.Node(proto.op_type, proto.name, attrs, [get(n) for n in proto.input],
                                   [get(n) for n in proto.output], domain=proto.domain or None))


def export(imported: Imported) -> onnx.ModelProto:
    """The edited graph as a ModelProto that keeps everything of the original that onnx-graphsurgeon drops."""
    with _untyped_odd_values(imported.graph):
        graph_proto = gs.export_onnx(imported.graph, do_type_check=False).graph
    out = onnx.ModelProto()
    copy_fields(imported.model, out, skip={"graph"})
    out.graph.CopyFrom(_restore_graph(imported, imported.graph, graph_proto))
    return out


@contextlib.contextmanager
def _untyped_odd_values(graph: gs.Graph) -> Iterator[None]:
    """Graph inputs and outputs of types onnx-graphsurgeon cannot write (optionals, maps) without a dtype
    while it exports (their declarations are restored from the original afterwards)."""
    known = ("tensor_type", "sequence_type", "sparse_tensor_type")
    odd = [t for _, _, g in walk_graphs(graph) for t in [*g.inputs, *g.outputs]
           if not isinstance(t, gs.Constant) and t.dtype is not None and getattr(t, "type", "tensor_type") not in known]
    saved = [(t, t.dtype) for t in odd]
    for t in odd:
        t.dtype = None
    try:
        yield
    finally:
        for t, dtype in saved:
            t.dtype = dtype


def _restore_graph(imported: Imported, graph: gs.Graph, exported: onnx.GraphProto,
                   outer: frozenset[str] = frozenset()) -> onnx.GraphProto:
    """``exported`` with the original's declarations, typed values, initializer order and node protos.

    ``outer``: the names the enclosing graphs define. onnx-graphsurgeon writes an outer constant that a
    subgraph reads into the subgraph as its own initializer; such copies are dropped (they would store the
    weight twice, and hide an outer initializer that is also a graph input, which callers may override)."""
    original = imported.proto_of(graph)
    if original is None:
        return exported
    scope = outer | {t.name for g in (original, exported) for t in g.initializer} | {
        i.name for g in (original, exported) for i in g.input} | {o for n in exported.node for o in n.output}
    nodes = [_restore_node(imported, node, proto, scope) for node, proto in zip(graph.nodes, exported.node)]
    present = {n for node in nodes for n in [*node.input, *node.output]}
    present |= {i.name for i in original.input} | {o.name for o in original.output}
    present |= _outer_reads(nodes)
    restored = onnx.GraphProto()
    copy_fields(original, restored, skip={"node", "initializer", "sparse_initializer", "value_info"})
    restored.node.extend(nodes)
    known = {t.name for t in original.initializer}
    restored.initializer.extend([t for t in original.initializer if t.name in present]
                                + [t for t in exported.initializer if t.name not in known and t.name not in outer])
    restored.sparse_initializer.extend(t for t in original.sparse_initializer if t.values.name in present)
    restored.value_info.extend(v for v in original.value_info if v.name in present)
    return restored


def _restore_node(imported: Imported, node: gs.Node, exported: onnx.NodeProto,
                  outer: frozenset[str] = frozenset()) -> onnx.NodeProto:
    original = imported.proto_of(node)
    if original is None:
        return exported
    restored = onnx.NodeProto()
    restored.CopyFrom(original)
    for attr in restored.attribute:
        if attr.type == onnx.AttributeProto.GRAPH and isinstance(node.attrs.get(attr.name), gs.Graph):
            sub = next(a.g for a in exported.attribute if a.name == attr.name)
            attr.g.CopyFrom(_restore_graph(imported, node.attrs[attr.name], sub, outer))
    return restored


def proto_subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in a NodeProto's attributes (If branches, Loop/Scan bodies)."""
    return [g for attr in node.attribute
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs))]


def _outer_reads(nodes: list[onnx.NodeProto]) -> set[str]:
    """Names that subgraphs of ``nodes`` read (possibly from this graph)."""
    names: set[str] = set()
    for node in nodes:
        for sub in proto_subgraphs(node):
            for inner in sub.node:
                names.update(inner.input)
            names.update(o.name for o in sub.output)
            names |= _outer_reads(list(sub.node))
    return names


class Inferred(dict):
    """Static shapes by tensor name (a plain ``dict`` of lists, dims None where unknown) with the element
    types inference found alongside: ``dtypes`` maps tensor names to numpy dtypes."""

    def __init__(self, shapes=(), dtypes: dict[str, np.dtype] | None = None):
        super().__init__(shapes)
        self.dtypes: dict[str, np.dtype] = dict(dtypes or {})


def infer_shapes(model: onnx.ModelProto) -> Inferred:
    """Static shapes of the main graph's tensors, from onnx shape inference where it succeeds (from the
    inputs' shapes and the ops' semantics: value_info and declared output shapes are not trusted), and
    their element types (``.dtypes``; tensors whose type inference left open are not in it).

    Runs on a copy without weight data, so it costs no extra weight memory; unknown dims are None.
    """
    skeleton = onnx.ModelProto()
    _copy_without_weight_data(model, skeleton)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False)
    except Exception:  # noqa: BLE001 - shape inference is best effort; callers treat missing shapes as unknown
        inferred = skeleton
    shapes = Inferred()
    g = inferred.graph
    for info in list(g.input) + list(g.output) + list(g.value_info):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                 for d in tensor_type.shape.dim]
        dtype = np_dtype(tensor_type.elem_type) if tensor_type.elem_type else None
        if dtype is not None:
            shapes.dtypes[info.name] = dtype
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
        dtype = np_dtype(tensor.data_type)
        if dtype is not None:
            shapes.dtypes[tensor.name] = dtype
    return shapes


def _copy_without_weight_data(model: onnx.ModelProto, into: onnx.ModelProto) -> None:
    """Copy ``model`` into ``into``, turning large initializers into graph inputs of the same type; without
    its value_info and output shapes, which may be stale (shapes come from the inputs and the ops alone).

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
    for output in graph.output:  # declared output shapes and value_info may be stale: inference finds them
        copy = g.output.add()
        copy.CopyFrom(output)
        if copy.type.HasField("tensor_type"):
            copy.type.tensor_type.ClearField("shape")
    declared = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if tensor.ByteSize() <= 4096:
            g.initializer.append(tensor)
        elif tensor.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
