"""Apply fold plans to a model: splice nodes, add new weights, prune what only the removed nodes used."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from .graph import GraphIndex, outer_names_used, subgraphs
from .passes.base import FoldPlan


def copy_fields(source, target, skip: Sequence[str]):
    """Copy every set field of protobuf ``source`` into ``target`` except those named in ``skip``."""
    for desc, value in source.ListFields():
        if desc.name in skip:
            continue
        if hasattr(value, "extend"):
            getattr(target, desc.name).extend(value)
        elif desc.message_type is not None:
            getattr(target, desc.name).CopyFrom(value)
        else:
            setattr(target, desc.name, value)
    return target


def _stored_constant(index: GraphIndex, name: str) -> bool:
    """An initializer or the output of a Constant node (never a real graph input)."""
    if name in index.initializers:
        return True
    return name in index.producer and index.nodes[index.producer[name]].op_type == "Constant"


def splice(index: GraphIndex, plans: Sequence[FoldPlan]) -> list[onnx.NodeProto]:
    """The node list with each plan's nodes in place of its removed nodes (at the last one's position,
    where all the chain's inputs already exist and before any reader of its output)."""
    removed = {i for p in plans for i in p.removed}
    insert_at = {max(p.removed): p for p in plans}
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(index.nodes):
        if i in insert_at:
            nodes.extend(insert_at[i].nodes)
        if i not in removed:
            nodes.append(node)
    return nodes


def names_read(nodes: Sequence[onnx.NodeProto], graph_outputs: set[str]) -> set[str]:
    used = set(graph_outputs)
    for node in nodes:
        used.update(n for n in node.input if n)
        for sub in subgraphs(node):
            used |= outer_names_used(sub)
    return used


def apply_plans(model: onnx.ModelProto, index: GraphIndex, plans: Sequence[FoldPlan]) -> onnx.ModelProto:
    """A new model with ``plans`` applied; constants read only by removed nodes are dropped.

    Initializers and Constant nodes that were already unused stay, so a model with nothing
    to fold comes back unchanged. The input model is not modified.
    """
    if not plans:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    removed_nodes = [index.nodes[i] for p in plans for i in p.removed]
    maybe_orphans = {n for node in removed_nodes for n in node.input if n}
    nodes = splice(index, plans)
    used = names_read(nodes, index.graph_outputs)
    orphans = {n for n in maybe_orphans if n not in used and _stored_constant(index, n)}
    nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] in orphans)]
    gone = orphans | {o for node in removed_nodes for o in node.output}
    produced = {o for node in nodes for o in node.output}
    gone -= produced

    graph = model.graph
    out = copy_fields(model, onnx.ModelProto(), skip=("graph",))
    g = copy_fields(graph, out.graph, skip=("node", "input", "value_info", "initializer"))
    g.node.extend(nodes)
    g.input.extend(i for i in graph.input if i.name not in orphans)
    g.value_info.extend(v for v in graph.value_info if v.name not in gone)
    g.initializer.extend(t for t in graph.initializer if t.name not in orphans)
    for plan in plans:
        g.initializer.extend(plan.initializers)
    return out
