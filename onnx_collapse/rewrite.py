"""Apply fold plans to a copy of a model: splice nodes, add new weights, prune what only removed nodes used."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import onnx

from .graph import GraphIndex, GraphPath, locate, outer_names_used, subgraphs
from .passes.base import FoldPlan


def splice(nodes: Sequence[onnx.NodeProto], plans: Sequence[FoldPlan]) -> list[onnx.NodeProto]:
    """``nodes`` with each plan's nodes in place of its removed ones, at the last removed position
    (where the chain's inputs already exist and before any reader of its output)."""
    removed = {i for p in plans for i in p.removed}
    insert_at = {max(p.removed): p for p in plans}
    out: list[onnx.NodeProto] = []
    for i, node in enumerate(nodes):
        if i in insert_at:
            out.extend(insert_at[i].nodes)
        if i not in removed:
            out.append(node)
    return out


def names_read(nodes: Sequence[onnx.NodeProto], graph_outputs: set[str]) -> set[str]:
    """Every name the nodes read, including what their subgraphs read from outside."""
    used = set(graph_outputs)
    for node in nodes:
        used.update(n for n in node.input if n)
        for sub in subgraphs(node):
            used |= outer_names_used(sub)
    return used


def _stored_constant(index: GraphIndex, name: str) -> bool:
    """An initializer or the output of a Constant node of this graph (never a real graph input)."""
    if name in index.initializers:
        return True
    return name in index.producer and index.nodes[index.producer[name]].op_type == "Constant"


def rewrite_graph(graph: onnx.GraphProto, index: GraphIndex, plans: Sequence[FoldPlan]) -> None:
    """Apply ``plans`` to ``graph`` in place; ``index`` describes the graph as it was analysed.

    Initializers and Constant nodes read only by removed nodes are dropped; ones that were already
    unused stay, so a graph with nothing to fold is left exactly as it was.
    """
    removed_nodes = [index.nodes[i] for p in plans for i in p.removed]
    maybe_orphans = {n for node in removed_nodes for n in node.input if n}
    nodes = splice(list(graph.node), plans)
    used = names_read(nodes, index.graph_outputs)
    orphans = {n for n in maybe_orphans if n not in used and _stored_constant(index, n)}
    nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] in orphans)]
    produced = {o for node in nodes for o in node.output}
    gone = (orphans | {o for node in removed_nodes for o in node.output}) - produced

    detached = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        detached.append(copy)
    del graph.node[:]
    graph.node.extend(detached)
    for field, key in ((graph.initializer, orphans), (graph.input, orphans), (graph.value_info, gone)):
        for i in reversed([i for i, item in enumerate(field) if item.name in key]):
            del field[i]
    for plan in plans:
        graph.initializer.extend(plan.initializers)


def apply_plans(model: onnx.ModelProto, indexes: Mapping[GraphPath, GraphIndex],
                plans: Sequence[FoldPlan]) -> onnx.ModelProto:
    """A copy of ``model`` with ``plans`` applied; ``indexes`` are the analysed graphs by path.

    Subgraphs are rewritten before the graphs that hold them, so node positions in paths stay valid.
    The input model is not modified; the copy is cheap when the weights are external.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_graph: dict[GraphPath, list[FoldPlan]] = defaultdict(list)
    for plan in plans:
        by_graph[plan.graph].append(plan)
    for path in sorted(by_graph, key=len, reverse=True):
        rewrite_graph(locate(out.graph, path), indexes[path], by_graph[path])
    return out
