"""Pass: find chains Layer (Link* Layer)+ and cut them into segments whose links are near the identity."""

from __future__ import annotations

import numpy as np

from ..graph import GraphView
from ..kinds import Layer, Link, layer_kind_for, link_kind_for
from ..plans import Segment
from ..report import FoldRecord
from .context import Context


def follow(view: GraphView, layer: Layer, starts: dict[str, Layer]) -> tuple[tuple[Link, ...], Layer] | str:
    """The links from ``layer`` to the next layer and that layer, or why the chain ends here ("" when
    the next op simply is not part of a chain)."""
    tensor, links = layer.output, []
    while True:
        nxt = view.sole_reader(tensor)
        if nxt is None:
            readers = view.readers(tensor)
            if any(link_kind_for(r) or layer_kind_for(r) for r in readers):
                return f"tensor {tensor!r} is read by {len(readers)} nodes or is a graph output"
            return ""
        following = starts.get(tensor)
        if following is not None and following.nodes[0] == nxt:
            if following.dtype != layer.dtype:
                return "layers have different dtypes"
            return tuple(links), following
        node = view.nodes[nxt]
        kind = link_kind_for(node)
        if kind is None:
            return ""
        found = kind.match(view, nxt, tensor, layer)
        if isinstance(found, str):
            return found
        links.append(found)
        tensor = node.outputs[0].name


def chain_record(view: GraphView, layers: list[Layer], links: list[tuple[Link, ...]], status: str,
                 reason: str) -> FoldRecord:
    acts = [link for gap in links for link in gap if link.slope is not None]
    return FoldRecord(
        layers=[view.label(layer.nodes[0]) for layer in layers],
        activations=[view.label(a.node) for a in acts],
        dims=[layers[0].n_in] + [layer.n_out for layer in layers],
        slopes=[[float(a.slope.min()), float(a.slope.max())] for a in acts],
        status=status,
        reason=reason,
        params_before=sum(layer.params for layer in layers) + sum(a.stored for gap in links for a in gap),
        macs_before=sum(layer.n_in * layer.n_out for layer in layers),
    )


def _span(values: np.ndarray) -> str:
    lo, hi = float(values.min()), float(values.max())
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g}..{hi:.3g}"


class FindChains:
    """Fills ``ctx.segments`` with foldable runs of layers; records runs it must leave alone."""

    name = "chains"

    def run(self, ctx: Context) -> None:
        view = ctx.view
        starts = {layer.input: layer for layer in ctx.layers}
        # A tensor read by two layers appears once in ``starts``; sole_reader() rules such tensors out.
        nexts: dict[int, tuple[tuple[Link, ...], Layer]] = {}
        for layer in ctx.layers:
            found = follow(view, layer, starts)
            if isinstance(found, tuple):
                nexts[layer.nodes[0]] = found
            elif found:
                ctx.notes.append(f"{view.label(layer.nodes[0])}: chain stops here: {found}")
        followers = {following.nodes[0] for _, following in nexts.values()}
        for head in (layer for layer in ctx.layers if layer.nodes[0] not in followers):
            layers, links = [head], []
            while layers[-1].nodes[0] in nexts:
                gap, following = nexts[layers[-1].nodes[0]]
                links.append(gap)
                layers.append(following)
            if len(layers) > 1:
                self._split(ctx, layers, links)

    def _split(self, ctx: Context, layers: list[Layer], links: list[tuple[Link, ...]]) -> None:
        """Cut the chain at links that are not near the identity; keep runs of two or more layers."""
        start, tol = 0, ctx.options.slope_tol
        for k, gap in enumerate(links + [None]):
            if gap is not None and all(link.deviation <= tol for link in gap):
                continue
            if gap is not None:
                far = [link for link in gap if link.deviation > tol]
                ctx.records.append(chain_record(
                    ctx.view, layers[k:k + 2], [gap], "skipped",
                    "; ".join(f"slope {_span(link.slope)} is not within {tol:g} of 1" for link in far),
                ))
            if k + 1 - start > 1:
                ctx.segments.append(Segment(layers[start:k + 1], links[start:k]))
            start = k + 1
