"""Link kind: ``PRelu`` with a constant slope and ``LeakyRelu``; the identity when every slope is 1.

PRelu slopes arrive as [C], [1,C], [1], [1,1], [1,1,C], torch's [C,1] on 3-D inputs (channel on axis 1), or
[C,1,1] after a convolution; a slope is accepted only where broadcasting it cannot change the data's shape.
"""

from __future__ import annotations

import numpy as np

from ...graph import GraphView, attribute
from ..base import FeatureMap, LinkKind, Site, Slope, register_link


@register_link
class NearIdentityActivation(LinkKind):
    name = "activation"
    op_types = ("PRelu", "LeakyRelu")

    def match(self, view: GraphView, i: int, site: Site) -> FeatureMap | str:
        node = view.nodes[i]
        if node.op == "LeakyRelu":
            return Slope(np.array(float(attribute(node, "alpha", 0.01)), dtype=np.float64))
        if node.inputs[0].name != site.data:
            return "PRelu reads the tensor as its slope"
        slope = view.constant(node.inputs[1].name)
        if slope is None or slope.dtype.kind != "f":
            return "PRelu slope is not a constant"
        if not site.keeps_shape(slope.shape):
            return f"PRelu slope of shape {list(slope.shape)} may broadcast the data to a new shape"
        return Slope(slope.astype(np.float64))
