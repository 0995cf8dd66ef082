"""Apply fold plans to a model with onnx-graphsurgeon: remove each plan's nodes, add its new ones, then let
the library drop what no output needs and restore topological order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import onnx
import onnx_graphsurgeon as gs

from .graph import GraphPath, add_nodes, export, import_model, locate
from .plans import FoldPlan


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
        add_nodes(graph, plan.nodes, plan.initializers, tensors)


def apply_plans(model: onnx.ModelProto, plans: Sequence[FoldPlan]) -> onnx.ModelProto:
    """A new model: ``model`` with ``plans`` applied (``model`` itself is not modified).

    Subgraphs are rewritten before the graphs that hold them, so node positions in paths stay valid.
    Nodes and constants that no graph output depends on any more are removed (onnx-graphsurgeon's
    cleanup), and nodes are put in topological order.
    """
    imported = import_model(model)
    by_graph: dict[GraphPath, list[FoldPlan]] = defaultdict(list)
    for plan in plans:
        by_graph[plan.graph].append(plan)
    for path in sorted(by_graph, key=len, reverse=True):
        rewrite_graph(locate(imported.graph, path), by_graph[path], visible_tensors(imported.graph, path))
    imported.graph.cleanup(recurse_functions=False).toposort(recurse_functions=False, mode="nodes")
    return export(imported)
