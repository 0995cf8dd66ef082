"""Apply fold plans to a model with onnx-graphsurgeon: remove each plan's nodes, add its new ones, then let
the library drop what no output needs and restore topological order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import uses_external_data
from onnx_graphsurgeon.util.exception import OnnxGraphSurgeonException

from .errors import CollapseError, one_line
from .graph import GraphPath, add_nodes, export, import_model, locate, proto_subgraphs, walk_graphs
from .io import copy_fields, dense_bytes, read_external
from .plans import FoldPlan

STUB_BYTES = 2**16  # new tensors from this size on go through onnx-graphsurgeon without their data


def stub(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """``tensor`` without its raw data, if it is large (its data is filled in after export); else itself.
    onnx-graphsurgeon's export copies every initializer several times over."""
    if not tensor.HasField("raw_data") or dense_bytes(tensor) < STUB_BYTES:
        return tensor
    out = onnx.TensorProto()
    copy_fields(tensor, out, skip={"raw_data"})
    return out


def fill_data(graph: onnx.GraphProto, data: dict[str, onnx.TensorProto], parked: Path | None = None,
              move: bool = False) -> None:
    """Give the stubs among the initializers of ``graph`` and its subgraphs their data, by name: from the
    plan's tensor in memory, or from its file under ``parked`` (see ``revert.park``). With ``move`` each
    tensor leaves ``data`` once copied, so where ``data`` held the last reference the data is in memory
    once, not twice (protobuf frees a tensor's data only with the tensor)."""
    for tensor in graph.initializer:
        real = data.pop(tensor.name, None) if move else data.get(tensor.name)
        if real is None or tensor.HasField("raw_data"):
            continue
        if real.HasField("raw_data"):
            tensor.raw_data = real.raw_data
        elif uses_external_data(real) and parked is not None:
            tensor.raw_data = read_external(real, parked)
            del tensor.external_data[:]
            tensor.ClearField("data_location")
    for node in graph.node:
        for sub in proto_subgraphs(node):
            fill_data(sub, data, parked, move)


def visible_tensors(root: gs.Graph, path: GraphPath) -> dict[str, gs.Tensor]:
    """Tensors by name visible inside the graph at ``path``: its own and those of its enclosing graphs."""
    tensors: dict[str, gs.Tensor] = {}
    graph = root
    tensors.update(graph.tensors())
    for i, name in path:
        graph = graph.nodes[i].attrs[name]
        tensors.update(graph.tensors())
    return tensors


def rewrite_graph(graph: gs.Graph, plans: Sequence[FoldPlan], tensors: dict[str, gs.Tensor]) -> None:
    """Replace each plan's nodes (positions in ``graph.nodes``) by its new nodes, wired by name."""
    removed = {i for plan in plans for i in plan.removed}
    for i in removed:
        # Only the producer links matter to what follows (cleanup, toposort and export walk producers and
        # the graph's own node list); unlinking inputs too would scan every reader list, quadratic when
        # hundreds of chains read one tensor.
        graph.nodes[i].outputs.clear()
    graph.nodes = [node for i, node in enumerate(graph.nodes) if i not in removed]
    for plan in plans:
        add_nodes(graph, plan.nodes, [stub(t) for t in plan.initializers], tensors)


def apply_plans(model: onnx.ModelProto, plans: Sequence[FoldPlan], parked: Path | None = None,
                move: bool = False) -> onnx.ModelProto:
    """A new model: ``model`` with ``plans`` applied (``model`` itself is not modified). With ``move`` the
    plans' new tensors give their data to it (the plans cannot be applied again).

    Subgraphs are rewritten before the graphs that hold them, so node positions in paths stay valid.
    Nodes and constants that no graph output depends on any more are removed (onnx-graphsurgeon's
    cleanup), and nodes are put in topological order.
    """
    return PlanApplier(model, parked).apply(plans, move)


class PlanApplier:
    """Applies sets of plans to one imported model, one set after another (verification's candidates).

    The model is imported once; after each set is applied and exported, the graph is put back as it was
    imported (node lists, and the links the rewrite and cleanup cut), so the next set starts from the
    original. A re-import per candidate dominated the cost of reverting hundreds of folds.
    """

    def __init__(self, model: onnx.ModelProto, parked: Path | None = None):
        self.parked = parked  # where plans' parked tensors keep their data
        self.imported = import_model(model)
        graphs = [graph for _, _, graph in walk_graphs(self.imported.graph)]
        self.node_lists = [(graph, list(graph.nodes)) for graph in graphs]
        self.links = [(node, list(node.inputs), list(node.outputs)) for _, nodes in self.node_lists for node in nodes]

    def apply(self, plans: Sequence[FoldPlan], move: bool = False) -> onnx.ModelProto:
        """The model with ``plans`` applied, cleaned up and in topological order (see ``apply_plans``)."""
        graph = self.imported.graph
        by_graph: dict[GraphPath, list[FoldPlan]] = defaultdict(list)
        for plan in plans:
            by_graph[plan.graph].append(plan)
        added: list[gs.Node] = []
        try:
            for path in sorted(by_graph, key=len, reverse=True):
                rewrite_graph(locate(graph, path), by_graph[path], visible_tensors(graph, path))
            added = self._new_nodes()
            graph.cleanup(recurse_functions=False).toposort(recurse_functions=False, mode="nodes")
            out = export(self.imported)
            data = {t.name: t for plan in plans for t in plan.initializers}
            if move:
                for plan in plans:
                    plan.release()  # ``data`` holds the only references to the new tensors
            fill_data(out.graph, data, self.parked, move)
            return out
        except OnnxGraphSurgeonException as exc:  # e.g. a cycle in a damaged model
            raise CollapseError(f"the model cannot be rewritten as a graph (onnx-graphsurgeon: {one_line(exc, 200)})"
                                ) from None
        finally:
            self._restore(added or self._new_nodes())

    def _new_nodes(self) -> list[gs.Node]:
        known = {id(node) for node, _, _ in self.links}
        return [node for _, _, g in walk_graphs(self.imported.graph) for node in g.nodes if id(node) not in known]

    def _restore(self, added: list[gs.Node]) -> None:
        """Back to the imported graph: new nodes unlinked as producers, cut links and node lists restored."""
        for node in added:
            node.outputs.clear()  # their inputs stay listed as readers: nothing after reads those lists
        for node, inputs, outputs in self.links:
            if len(node.outputs) != len(outputs):
                node.outputs.clear()
                node.outputs.extend(outputs)
            if len(node.inputs) != len(inputs):
                node.inputs.clear()
                node.inputs.extend(inputs)
        for g, nodes in self.node_lists:
            g.nodes = list(nodes)
