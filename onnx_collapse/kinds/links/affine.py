"""Link kind: ``Mul``/``Div``/``Add``/``Sub`` of the features by a constant that varies along the feature
axis only (LayerScale, scaling, shifts; per channel after a convolution); the fold multiplies it in."""

from __future__ import annotations

import numpy as np

from ...graph import GraphView
from ..base import Elementwise, FeatureMap, LinkKind, Site, register_link


@register_link
class ElementwiseAffine(LinkKind):
    name = "affine"
    op_types = ("Mul", "Div", "Add", "Sub")

    def match(self, view: GraphView, i: int, site: Site) -> FeatureMap | str:
        node = view.nodes[i]
        if len(node.inputs) != 2:
            return f"{node.op} does not have two inputs"
        a, b = (t.name for t in node.inputs)
        data_first = a == site.data
        other = b if data_first else a
        if other == site.data:
            return f"{node.op} reads the features twice"
        value = view.constant(other)
        if value is None or value.dtype.kind != "f":
            return f"{node.op} by a tensor that is not a float constant"
        if not site.per_feature(value.shape):
            return f"{node.op} by a constant of shape {list(value.shape)} that does not act per feature"
        c = value.astype(np.float64).reshape(-1)
        if node.op == "Mul":
            return Elementwise(scale=c)
        if node.op == "Add":
            return Elementwise(shift=c)
        if node.op == "Sub":
            return Elementwise(shift=-c) if data_first else Elementwise(scale=-np.ones_like(c), shift=c)
        if not data_first:
            return "Div of a constant by the features is not affine"
        if np.any(c == 0):
            return "Div by a constant holding zeros"
        return Elementwise(scale=1.0 / c)
