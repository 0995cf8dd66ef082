"""Pass: find chains Layer (Link* Layer)+ and cut them into segments whose links are near the identity.

Affine links right before the first layer or right after the last one (a BatchNormalization, a
LayerScale ``Mul``) are absorbed into the segment too, so even a single layer followed by one folds.
"""

from __future__ import annotations

from ..candidates import Candidate, Chain, Outcome
from ..graph import GraphView
from ..kinds import Elementwise, Layer, Link, Regroup, Site, Slope, layer_kind_for, link_kind_for
from ..plans import Segment
from .context import Context


def _describe(view: GraphView, node) -> str:
    i = view.position.get(id(node))
    return f"{view.label(i) if i is not None else node.name!r} ({node.op})"


def input_site(view: GraphView, tensor: str, layer: Layer) -> Site:
    """The features in ``tensor`` as ``layer`` reads them (its input, or what links before it read): its
    input width on its axis, in its weights' dtype where the graph does not say."""
    return Site.of(view, tensor, layer.n_in, layer.layout.axis, layer.layout.input_rank, layer.dtype)


def output_site(view: GraphView, layer: Layer) -> Site:
    """The features a layer writes (a layer's output has the rank of its input and its weights' dtype)."""
    return Site.of(view, layer.output, layer.n_out, layer.layout.axis, layer.layout.input_rank, layer.dtype)


def why_not_read_by_one(view: GraphView, tensor: str) -> str:
    """Why ``tensor`` does not lead on to exactly one node of this graph."""
    readers = view.readers(tensor)
    if tensor in view.output_names:
        return f"its output {tensor!r} is a model output (no layer follows)"
    if not readers:
        return f"{tensor!r} is not read"
    if len(readers) > 1:
        return f"{tensor!r} is read by {len(readers)} nodes: " + ", ".join(_describe(view, r) for r in readers[:3])
    return f"{tensor!r} is read inside a subgraph by {_describe(view, readers[0])}"


def follow(view: GraphView, layer: Layer, starts: dict[str, Layer]) -> tuple[tuple[Link, ...], Layer] | str:
    """The links from ``layer`` to the next layer and that layer, or why the chain ends after ``layer``
    (naming the op that ended it)."""
    site, links = output_site(view, layer), []
    while True:
        nxt = view.sole_reader(site.data)
        if nxt is None:
            return why_not_read_by_one(view, site.data)
        following = starts.get(site.data)
        if following is not None and following.nodes[0] == nxt:
            if following.dtype != layer.dtype:
                return f"{view.label(nxt)} ({view.nodes[nxt].op}) has another dtype"
            if following.layout.axis != layer.layout.axis:
                return f"{view.label(nxt)} ({view.nodes[nxt].op}) reads its features on another axis"
            return tuple(links), following
        node = view.nodes[nxt]
        kind = link_kind_for(node)
        if kind is None:
            what = "a layer that is not foldable" if layer_kind_for(node) else "not an op a fold can pass through"
            return f"next op {_describe(view, node)} is {what}"
        found = kind.link(view, nxt, site)
        if isinstance(found, str):
            return f"next op {_describe(view, node)}: {found}"
        links.append(found)
        site = found.after


def _edge_link(view: GraphView, i: int, site: Site) -> Link | None:
    """Node ``i`` as a link that may stand at a segment's edge (affine, or a shape op re-emitted around the
    fold), reading ``site``."""
    kind = link_kind_for(view.nodes[i])
    found = None if kind is None else kind.link(view, i, site)
    return found if isinstance(found, Link) and isinstance(found.map, (Elementwise, Regroup)) else None


def leading_links(view: GraphView, head: Layer, claimed: set[int]) -> tuple[tuple[Link, ...], str]:
    """Affine links before ``head`` (possibly behind shape ops), each read only by what follows, outermost
    first, and the tensor the first of them reads. Shape ops with no affine link beyond them stay out."""
    found: list[tuple[Link, str]] = []
    tensor = head.input
    while view.sole_reader(tensor) is not None:
        producer = view.producer(tensor)
        i = None if producer is None else view.position.get(id(producer))
        if i is None or i in claimed:
            break
        data = [t.name for t in producer.inputs if t.name and not view.is_constant(t.name)]
        if len(data) != 1:
            break
        link = _edge_link(view, i, input_site(view, data[0], head))
        if link is None:
            break
        found.insert(0, (link, data[0]))
        tensor = data[0]
    while found and not isinstance(found[0][0].map, Elementwise):
        found.pop(0)
    return tuple(link for link, _ in found), found[0][1] if found else head.input


def trailing_links(view: GraphView, tail: Layer, claimed: set[int]) -> tuple[tuple[Link, ...], str]:
    """Affine links after ``tail`` (possibly behind shape ops), each the only reader of what comes before
    it, and the tensor the last of them writes. Shape ops with no affine link beyond them stay out."""
    found: list[tuple[Link, str]] = []
    site = output_site(view, tail)
    while (i := view.sole_reader(site.data)) is not None and i not in claimed:
        link = _edge_link(view, i, site)
        if link is None:
            break
        site = link.after
        found.append((link, site.data))
    while found and not isinstance(found[-1][0].map, Elementwise):
        found.pop()
    return tuple(link for link, _ in found), found[-1][1] if found else tail.output


def stored_params(view: GraphView, positions, counted: set | None = None) -> int:
    """Elements of the stored constants the nodes at ``positions`` read, each stored tensor once; with
    ``counted``, also once across calls (a slope shared by several chains counts in the first)."""
    counted = set() if counted is None else counted
    total = 0
    for i in positions:
        for tensor in view.nodes[i].inputs:
            found = view.constant_identity(tensor.name) if tensor.name else None
            if found is not None and found[0] not in counted:
                counted.add(found[0])
                total += found[1]
    return total


def describe_chain(view: GraphView, segment: Segment, counted: set | None = None) -> Chain:
    """What a segment is, for its candidate; parameters count stored tensors once (see ``stored_params``)."""
    acts = segment.activations()
    return Chain(
        layers=[view.label(layer.nodes[0]) for layer in segment.layers],
        activations=[view.label(a.node) for a in acts],
        dims=[segment.layers[0].n_in] + [layer.n_out for layer in segment.layers],
        slopes=[list(a.map.span) for a in acts],
        params_before=stored_params(view, segment.node_positions(), counted),
        macs_before=sum(layer.macs for layer in segment.layers),
    )


def candidate_for(ctx: Context, segment: Segment, reason: str = "", counted: set | None = None) -> Candidate:
    """A new candidate of ``ctx``'s graph for ``segment``, with no form yet (``reason`` says why, if known)."""
    return Candidate(describe_chain(ctx.view, segment, counted), ctx.path, segment, outcome=Outcome(reason=reason))


def rows_kept(view: GraphView, segment: Segment) -> str:
    """"" when the shape links between the segment's layers (if any) leave the rows as they were; else why
    not. (Shape links before the first or after the last layer are emitted again around the fold.)"""
    if not any(isinstance(link.map, Regroup) for gap in segment.links for link in gap):
        return ""
    head, tail = segment.layers[0], segment.layers[-1]
    x, y = view.shapes.get(head.input), view.shapes.get(tail.output)
    x_rank = len(x) if x is not None else head.layout.input_rank
    y_rank = len(y) if y is not None else (2 if tail.layout.input_rank == 2 else None)
    if x_rank == 2 and y_rank == 2:
        return ""  # a 2-D tensor's rows are its elements divided by the width: shape ops keep them
    if x is not None and y is not None and None not in x[:-1] and list(x[:-1]) == list(y[:-1]):
        return ""
    return "shape ops between the layers may change the leading dims (rank or shape not provably kept)"


def _span(slope: Slope) -> str:
    lo, hi = slope.span
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g}..{hi:.3g}"


def _deviation(link: Link) -> float:
    """How far an activation is from the identity; 0 for the other links (a chain is cut at activations only)."""
    return link.map.deviation if isinstance(link.map, Slope) else 0.0


class FindChains:
    """Fills ``ctx.segments`` with foldable runs of layers (and the affine links around them); records
    runs it must leave alone, and why each layer's chain ended (``ctx.stops``)."""

    name = "chains"

    @staticmethod
    def stage(options, contexts):
        return "finding chains of layers", None, None

    def run(self, ctx: Context) -> None:
        view = ctx.view
        starts = {layer.input: layer for layer in ctx.layers}
        # A tensor read by two layers appears once in ``starts``; sole_reader() rules such tensors out.
        nexts: dict[int, tuple[tuple[Link, ...], Layer]] = {}
        for layer in ctx.layers:
            found = follow(view, layer, starts)
            if isinstance(found, tuple):
                nexts[layer.nodes[0]] = found
            else:
                ctx.stops[layer.nodes[0]] = found
        followers = {following.nodes[0] for _, following in nexts.values()}
        claimed = {i for layer in ctx.layers for i in layer.nodes}
        claimed |= {link.node for gap, _ in nexts.values() for link in gap}
        for head in (layer for layer in ctx.layers if layer.nodes[0] not in followers):
            layers, links = [head], []
            while layers[-1].nodes[0] in nexts:
                gap, following = nexts[layers[-1].nodes[0]]
                links.append(gap)
                layers.append(following)
            self._split(ctx, layers, links, claimed)

    def _split(self, ctx: Context, layers: list[Layer], links: list[tuple[Link, ...]], claimed: set[int]) -> None:
        """Cut the chain at links that are not near the identity; keep runs of two or more layers, or of one
        with affine links around it."""
        start, tol = 0, ctx.options.slope_tol
        for k, gap in enumerate(links + [None]):
            if gap is not None and all(_deviation(link) <= tol for link in gap):
                continue
            if gap is not None:
                far = [link for link in gap if _deviation(link) > tol]
                ctx.candidates.append(candidate_for(
                    ctx, Segment(layers[k:k + 2], [gap]),
                    "; ".join(f"slope {_span(link.map)} is not within {tol:g} of 1" for link in far),
                ))
            self._add(ctx, Segment(layers[start:k + 1], links[start:k]), claimed)
            start = k + 1

    def _add(self, ctx: Context, segment: Segment, claimed: set[int]) -> None:
        view = ctx.view
        segment.lead, segment.input = leading_links(view, segment.layers[0], claimed)
        segment.trail, segment.output = trailing_links(view, segment.layers[-1], claimed)
        if len(segment.layers) < 2 and not (segment.lead or segment.trail):
            return
        claimed.update(link.node for link in segment.lead + segment.trail)
        why = rows_kept(view, segment)
        if why:
            ctx.candidates.append(candidate_for(ctx, segment, why))
            return
        ctx.segments.append(segment)
