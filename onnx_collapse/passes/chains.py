"""Pass: find chains Linear (Act Linear)+ and cut them into segments whose activations are near identity."""

from __future__ import annotations

import numpy as np

from ..graph import GraphIndex, attribute
from ..report import FoldRecord
from .base import Activation, Context, Linear, Link, Segment

TRANSPARENT = ("Identity", "Dropout")
ACTIVATIONS = ("PRelu", "LeakyRelu")


def is_transparent(index: GraphIndex, i: int) -> bool:
    """Identity, or a Dropout that is the identity at inference (no training_mode, no mask used)."""
    node = index.nodes[i]
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    if len(node.output) > 1 and node.output[1] and index.consumers.get(node.output[1]):
        return False
    if len(node.output) > 1 and node.output[1] in index.graph_outputs:
        return False
    if len(node.input) > 2 and node.input[2]:
        training = index.constant(node.input[2])
        return training is not None and not bool(np.any(training))
    return True


def slope_keeps_shape(slope_shape: tuple[int, ...], data_shape: list[int | None] | None, n_out: int) -> bool:
    """True when broadcasting a PRelu slope against the data cannot change the data's shape.

    ``data_shape`` comes from shape inference (None if unknown); its last dim is ``n_out``.
    """
    if data_shape is None:
        # rank unknown: only a scalar-like or last-axis slope of rank <= 1 is safe for any rank >= 1
        return len(slope_shape) <= 1 and (not slope_shape or slope_shape[-1] in (1, n_out))
    if len(slope_shape) > len(data_shape):
        return False
    dims = list(data_shape[:-1]) + [n_out]
    for s, d in zip(reversed(slope_shape), reversed(dims)):
        if s != 1 and s != d:
            return False
    return True


def match_activation(index: GraphIndex, i: int, data: str, linear: Linear) -> Activation | str:
    """An Activation for node ``i`` applied to ``data`` (output of ``linear``), or why it is not one."""
    node = index.nodes[i]
    if node.op_type == "LeakyRelu":
        return Activation(i, np.array(float(attribute(node, "alpha", 0.01)), dtype=np.float64), 0)
    if node.input[0] != data:
        return "PRelu reads the tensor as its slope"
    slope = index.constant(node.input[1])
    if slope is None or slope.dtype.kind != "f":
        return "PRelu slope is not a constant"
    shape = index.shapes.get(data)
    if shape is None and linear.is_gemm:
        shape = [None, linear.n_out]
    if not slope_keeps_shape(slope.shape, shape, linear.n_out):
        return f"PRelu slope of shape {list(slope.shape)} may broadcast the data to a new shape"
    return Activation(i, slope.astype(np.float64), slope.size)


def follow(index: GraphIndex, linear: Linear, starts: dict[str, Linear]) -> tuple[Link, Linear] | str:
    """The link from ``linear`` to the next linear layer, or why the chain ends here."""
    tensor, nodes, activation = linear.output, [], None
    while True:
        nxt = index.sole_consumer(tensor)
        if nxt is None:
            readers = [index.nodes[r].op_type for r in index.consumers.get(tensor, [])]
            if set(readers) & {"Gemm", "MatMul", *ACTIVATIONS, *TRANSPARENT}:
                return f"tensor {tensor!r} is read by {len(readers)} nodes or is a graph output"
            return ""
        node = index.nodes[nxt]
        if tensor in starts and starts[tensor].nodes[0] == nxt:
            following = starts[tensor]
            if following.dtype != linear.dtype:
                return "layers have different dtypes"
            return Link(tuple(nodes), activation), following
        if is_transparent(index, nxt):
            nodes.append(nxt)
            tensor = node.output[0]
            continue
        if node.op_type in ACTIVATIONS and node.domain in ("", "ai.onnx") and activation is None:
            found = match_activation(index, nxt, tensor, linear)
            if isinstance(found, str):
                return found
            activation = found
            nodes.append(nxt)
            tensor = node.output[0]
            continue
        return ""


def chain_record(index: GraphIndex, linears: list[Linear], links: list[Link], status: str, reason: str) -> FoldRecord:
    acts = [lk.activation for lk in links if lk.activation is not None]
    return FoldRecord(
        layers=[index.label(lin.nodes[0]) for lin in linears],
        activations=[index.label(a.node) for a in acts],
        dims=[linears[0].n_in] + [lin.n_out for lin in linears],
        slopes=[[float(a.slope.min()), float(a.slope.max())] for a in acts],
        status=status,
        reason=reason,
        params_before=sum(lin.params for lin in linears) + sum(a.stored for a in acts),
        macs_before=sum(lin.n_in * lin.n_out for lin in linears),
    )


def _span(values: np.ndarray) -> str:
    lo, hi = float(values.min()), float(values.max())
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g}..{hi:.3g}"


class FindChains:
    """Fills ``ctx.segments`` with foldable runs of linear layers; records runs it must leave alone."""

    name = "chains"

    def run(self, ctx: Context) -> None:
        index = ctx.index
        starts = {lin.input: lin for lin in ctx.linears}
        # A tensor read by two linears appears once in ``starts``; sole_consumer() rules such tensors out.
        nexts: dict[int, tuple[Link, Linear]] = {}
        for lin in ctx.linears:
            found = follow(index, lin, starts)
            if isinstance(found, tuple):
                nexts[lin.nodes[0]] = found
            elif found:
                ctx.notes.append(f"{index.label(lin.nodes[0])}: chain stops here: {found}")
        followers = {following.nodes[0] for _, following in nexts.values()}
        heads = [lin for lin in ctx.linears if lin.nodes[0] not in followers]
        for head in heads:
            linears, links = [head], []
            while linears[-1].nodes[0] in nexts:
                link, following = nexts[linears[-1].nodes[0]]
                links.append(link)
                linears.append(following)
            if len(linears) > 1:
                self._split(ctx, linears, links)

    def _split(self, ctx: Context, linears: list[Linear], links: list[Link]) -> None:
        """Cut the chain at activations that are not near the identity; keep runs of two or more layers."""
        start = 0
        for k, link in enumerate(links + [None]):
            act = None if link is None else link.activation
            if link is not None and (act is None or act.deviation <= ctx.options.slope_tol):
                continue
            if link is not None:
                ctx.records.append(chain_record(
                    ctx.index, linears[k:k + 2], [link], "skipped",
                    f"slope {_span(act.slope)} is not within {ctx.options.slope_tol:g} of 1",
                ))
            if k + 1 - start > 1:
                ctx.segments.append(Segment(linears[start:k + 1], links[start:k]))
            start = k + 1
