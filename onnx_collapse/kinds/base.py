"""The two open kinds the passes recognise, and their registries.

A **layer kind** recognises a linear map in the graph (``y = x W + b`` along a feature axis): its
``Layer`` carries a typed :class:`~onnx_collapse.layout.Layout` (feature axis, how its rows are read,
matrix rows per feature, MACs, a sample input) and the kind's own ``params``; the kind gives the weights as
a float64 :class:`~onnx_collapse.linalg.Affine`, counts its nodes' MACs, and says how a folded map is
written back (an :class:`~onnx_collapse.emit.Emission`). A **link kind** recognises a node that may stand
between two layers of a chain, and says what it does along the features (a :class:`FeatureMap`) and where
they are after it (a :class:`Site`). Each kind is one file under ``kinds/layers`` or ``kinds/links`` that
registers itself with ``@register_layer`` / ``@register_link``; ``kinds/__init__.py`` imports it in one
line, in any order (a ``Registry`` refuses a second kind for an op).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import linalg
from ..emit import Emission
from ..graph import GraphView, is_default_domain
from ..layout import Features, Layout
from ..linalg import Affine

EmissionFor = Callable[[bool, int], Emission]  # (has a bias, number of matrices) -> how to write them
FEATURES = Features()  # a fully connected layer's layout where nothing else is known


@dataclass(frozen=True)
class Layer:
    """A recognised linear layer made of ``nodes`` (positions in the graph), ``input`` -> ``output``.

    Only names and shapes are kept; ``affine()`` reads the values when a fold needs them. ``layout`` is
    the kind's typed description of how the layer lays out its features (``layout.Layout``: its feature
    axis, input rank, output positions, how its rows are read); ``params`` anything else its kind needs to
    read the weights (a typed object of that kind's own, e.g. Gemm's ``GemmParams``), None if nothing.
    """

    kind: LayerKind
    nodes: tuple[int, ...]
    input: str
    output: str
    n_in: int
    n_out: int
    dtype: np.dtype  # storage dtype of the weights
    weight: str
    bias: str | None = None
    bias_rank: int = 0  # rank of the stored bias (broadcasting can raise the output's rank); 0 without
    layout: Layout = FEATURES
    params: object = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_in, self.n_out

    @property
    def macs(self) -> int:
        """Multiply-accumulates per sample at the layout's output positions (a convolution's pixels, a 3-D
        input's tokens: measured or static where known, else one position)."""
        return self.layout.macs(self.n_in, self.n_out)

    def affine(self, view: GraphView) -> Affine:
        return self.kind.affine(self, view)


class LayerKind(ABC):
    """Recognises one kind of linear layer; see the module docstring. Where its features are (chains join
    layers of one axis) is its layers' ``layout``; no two registered kinds claim one op."""

    name: str
    op_types: tuple[str, ...]

    @abstractmethod
    def match(self, view: GraphView, i: int) -> Layer | str:
        """A Layer for node ``i`` (whose op is one of ``op_types``), or the reason it is not one."""

    def affine(self, layer: Layer, view: GraphView) -> Affine:
        """The layer's map: the stored (n_in, n_out) weight (a view, possibly of the data file), a float64
        bias broadcast over the outputs. Kinds that store the weight otherwise override this."""
        w = view.constant(layer.weight)
        return Affine(w, stored_bias(view, layer))

    def node_macs(self, node, shape_of: Callable[[str], tuple | None],
                  per_sample: Callable[[str], float | None]) -> int | None:
        """Multiply-accumulates per sample of one ``node`` of this kind's ops in a model (``macs.count``),
        whether or not it matched, from its real shapes: ``shape_of`` a tensor's shape with every dim past
        axis 0 known (else None), ``per_sample`` its elements per sample. None: a size is unknown, or the
        kind does not count its nodes."""
        return None

    def macs_tensors(self, node) -> list[str]:
        """The tensors ``node_macs`` needs the shapes of (measured in a run where inference leaves them
        unknown)."""
        return list(node.output[:1])

    def fold_maps(self, view: GraphView, segment, prefix: str, opset: int) -> tuple[list[Affine], EmissionFor] | str:
        """The segment (layers starting with one of this kind, links between and around them) as matrices
        to multiply in order, and how to write the product (given whether it has a bias and how many
        matrices it keeps); or why it cannot be one layer.

        Fully connected layers: each layer's map, affine links multiplied into the layer after them (links
        after the last layer into it), written as the first layer's kind writes layers."""
        affines = []
        for gap, layer in zip([segment.lead, *segment.links], segment.layers):
            affine = layer.affine(view)
            before = elementwise(gap)
            affines.append(affine if before is None else linalg.elementwise_then(*before, affine))
        trailing = elementwise(segment.trail)
        if trailing is not None:
            affines[-1] = linalg.then_elementwise(affines[-1], *trailing)
        head, bias_rank = segment.layers[0], max(layer.bias_rank for layer in segment.layers)
        return affines, lambda has_bias, n_matrices: self.emission(head, prefix, opset, bias_rank, has_bias,
                                                                   n_matrices)

    @abstractmethod
    def emission(self, layer: Layer, prefix: str, opset: int, bias_rank: int, has_bias: bool,
                 n_matrices: int) -> Emission:
        """How a folded map that starts at ``layer`` is written: node names start with ``prefix``,
        ``bias_rank`` is the largest of the chain, ``n_matrices`` 1 (dense) or 2 (factor pair)."""


@dataclass(frozen=True)
class Site:
    """Where a link reads the features: tensor ``data`` with ``width`` features on ``axis`` (-1: the last,
    1: channels), static ``shape`` where known (None; dynamic dims None) and element type ``dtype`` where
    known (a numpy dtype, None if unknown)."""

    data: str
    width: int
    shape: tuple[int | None, ...] | None = None
    axis: int = -1
    dtype: np.dtype | None = None

    @classmethod
    def of(cls, view: GraphView, data: str, width: int, axis: int = -1, rank: int | None = None,
           dtype: np.dtype | None = None) -> Site:
        """The features in tensor ``data``: shape from inference, else ``rank`` dims with ``width`` on ``axis``
        (None if the rank is unknown too); dtype from inference or the graph's declarations, else ``dtype``."""
        shape = view.shapes.get(data)
        if shape is None and rank is not None:
            shape = [None] * rank
            shape[axis] = width
        found = view.dtype(data)
        return cls(data, width, None if shape is None else tuple(shape), axis, dtype if found is None else found)

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def keeps_shape(self, shape: tuple[int, ...]) -> bool:
        """True when a constant of ``shape`` broadcast against the data cannot change the data's shape."""
        if self.shape is None:  # rank unknown: only what broadcasts against any rank >= 1 without growing
            ones = all(d == 1 for d in shape)
            return ones if self.axis != -1 else len(shape) <= 1 and (not shape or shape[-1] in (1, self.width))
        if len(shape) > len(self.shape):
            return False
        return all(s == 1 or s == d for s, d in zip(reversed(shape), reversed(self.shape)))

    def per_feature(self, shape: tuple[int, ...]) -> bool:
        """True when a constant of ``shape`` varies along the features only (and keeps the data's shape)."""
        if not self.keeps_shape(shape):
            return False
        if all(d == 1 for d in shape):
            return True
        if self.axis == -1:
            return shape[-1] == self.width and all(d == 1 for d in shape[:-1])
        if self.shape is None:
            return False
        at = len(shape) - (len(self.shape) - self.axis)  # the feature axis, right-aligned into ``shape``
        return 0 <= at < len(shape) and all(d == 1 for k, d in enumerate(shape) if k != at)


class FeatureMap:
    """What a link does along the features: exactly one of :class:`Identity`, :class:`Elementwise`,
    :class:`Slope` and :class:`Regroup`. The passes tell them apart by type and read only their fields."""

    def shape_after(self, shape: tuple[int | None, ...] | None) -> tuple[int | None, ...] | None:
        """The data's shape after the map, given its shape before (None: unknown). Only Regroup changes it."""
        return shape


@dataclass(frozen=True)
class Identity(FeatureMap):
    """The features pass through unchanged (the fold drops the node)."""


@dataclass(frozen=True, eq=False)
class Elementwise(FeatureMap):
    """``x * scale + shift`` with ``scale``/``shift`` float64 per feature (or scalars; None: 1 and 0); the
    fold multiplies it into the layer after it (into the one before it, after a segment's last layer)."""

    scale: np.ndarray | None = None
    shift: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Slope(FeatureMap):
    """An activation with ``slope`` (float64, as stored, per feature or a scalar) on negative inputs: the
    identity when every slope is 1; a chain folds through it only within ``slope_tol`` of that."""

    slope: np.ndarray

    @property
    def deviation(self) -> float:
        """max |1 - slope|: how far the activation is from the identity."""
        return float(np.max(np.abs(1.0 - self.slope)))

    @property
    def span(self) -> tuple[float, float]:
        """The smallest and largest slope."""
        return float(np.min(self.slope)), float(np.max(self.slope))


@dataclass(frozen=True)
class Regroup(FeatureMap):
    """A shape op: the rows regrouped, each row of features kept as it is; ``shape`` is the data's shape
    after it (dims None where unknown). Between layers the fold checks the rows come out as they went in;
    before the first layer or after the last one the node is written again around the fold."""

    shape: tuple[int | None, ...]

    def shape_after(self, shape):
        return self.shape


IDENTITY = Identity()


def elementwise(links) -> tuple[np.ndarray | float, np.ndarray | float] | None:
    """``(scale, shift)`` applying the Elementwise maps among ``links`` in order (the others leave each
    feature as it is, near enough to fold); None when there are none."""
    return linalg.combine_elementwise((link.map.scale, link.map.shift) for link in links
                                      if isinstance(link.map, Elementwise))


@dataclass(frozen=True, eq=False)
class Link:
    """A node (position ``node``) between two layers that acts on each feature alone: ``map`` says what it
    does to them, ``after`` is the features it leaves (what the next node reads)."""

    kind: LinkKind
    node: int
    map: FeatureMap
    after: Site


class LinkKind(ABC):
    """Recognises one kind of link; see the module docstring. A kind answers two questions: ``match``, what
    a node does along the features (or why it is not a link), and ``next_site``, where the features are
    after it. The passes call ``link``, which asks both."""

    name: str
    op_types: tuple[str, ...]

    @abstractmethod
    def match(self, view: GraphView, i: int, site: Site) -> FeatureMap | str:
        """What node ``i`` (whose op is one of ``op_types``) does to the features at ``site``, or why it is
        not a link."""

    def next_site(self, view: GraphView, i: int, site: Site, feature_map: FeatureMap) -> Site:
        """The features after node ``i``: its first output, with the width, axis and dtype of ``site`` (a
        link acts on each feature alone and keeps its type; the dtype from inference where ``site`` has
        none); the shape from inference, else the one ``feature_map`` leaves. Override for more."""
        data = view.nodes[i].outputs[0].name
        shape = view.shapes.get(data)
        shape = feature_map.shape_after(site.shape) if shape is None else tuple(shape)
        return Site(data, site.width, shape, site.axis, site.dtype if site.dtype is not None else view.dtype(data))

    def link(self, view: GraphView, i: int, site: Site) -> Link | str:
        """Node ``i`` as a Link reading the features at ``site``, or why it is not one."""
        found = self.match(view, i, site)
        return found if isinstance(found, str) else Link(self, i, found, self.next_site(view, i, site, found))


class Registry:
    """The registered kinds of one sort, by op. Registering a kind for an op another kind already claims
    raises, so which kind handles a node never depends on the order kinds were imported in."""

    def __init__(self, sort: str):
        self.sort = sort
        self._by_op: dict[str, object] = {}
        self._kinds: list = []

    def add(self, kind) -> None:
        taken = {op: self._by_op[op] for op in kind.op_types if op in self._by_op}
        if taken:
            op, other = next(iter(taken.items()))
            raise ValueError(f"{self.sort} kind {kind.name!r} claims op {op!r}, already handled by "
                             f"{other.name!r}: an op has one {self.sort} kind")
        self._kinds.append(kind)
        self._by_op.update(dict.fromkeys(kind.op_types, kind))

    def for_node(self, node):
        """The kind handling ``node``'s op (default domain only), if any."""
        return self._by_op.get(node.op) if is_default_domain(node) else None

    def for_op(self, op: str):
        """The kind handling op ``op`` of the default domain, if any."""
        return self._by_op.get(op)

    @property
    def ops(self) -> tuple[str, ...]:
        """Every op some registered kind handles."""
        return tuple(self._by_op)

    def __iter__(self):
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


LAYER_KINDS = Registry("layer")
LINK_KINDS = Registry("link")


def register_layer(cls: type[LayerKind]) -> type[LayerKind]:
    """Class decorator: make a layer kind known to the passes (ValueError if another claims one of its ops)."""
    LAYER_KINDS.add(cls())
    return cls


def register_link(cls: type[LinkKind]) -> type[LinkKind]:
    """Class decorator: make a link kind known to the passes (ValueError if another claims one of its ops)."""
    LINK_KINDS.add(cls())
    return cls


def layer_kind_for(node) -> LayerKind | None:
    """The registered layer kind handling ``node``'s op, if any."""
    return LAYER_KINDS.for_node(node)


def link_kind_for(node) -> LinkKind | None:
    """The registered link kind handling ``node``'s op, if any."""
    return LINK_KINDS.for_node(node)


def stored_bias(view: GraphView, layer: Layer) -> np.ndarray | None:
    """The layer's stored bias as float64, broadcast over its ``n_out`` outputs (None without one)."""
    if layer.bias is None:
        return None
    raw = view.constant(layer.bias)
    return np.array(np.broadcast_to(raw.reshape(-1).astype(np.float64), (layer.n_out,)))
