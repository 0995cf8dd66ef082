"""Link kind: ``PRelu`` with a constant slope and ``LeakyRelu``; the identity when every slope is 1.

PRelu slopes arrive as [C], [1,C], [1], [1,1], [1,1,C], or torch's [C,1] on 3-D inputs (channel on axis 1);
a slope is accepted only where broadcasting it cannot change the data's shape.
"""

from __future__ import annotations

import numpy as np

from ...graph import GraphView, attribute
from ..base import Link, LinkKind, Site, register_link


def slope_keeps_shape(slope_shape: tuple[int, ...], data_shape: tuple[int | None, ...] | None, n_out: int) -> bool:
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


@register_link
class NearIdentityActivation(LinkKind):
    name = "activation"
    op_types = ("PRelu", "LeakyRelu")

    def match(self, view: GraphView, i: int, site: Site) -> Link | str:
        node = view.nodes[i]
        if node.op == "LeakyRelu":
            return Link(self, i, np.array(float(attribute(node, "alpha", 0.01)), dtype=np.float64))
        if node.inputs[0].name != site.data:
            return "PRelu reads the tensor as its slope"
        slope = view.constant(node.inputs[1].name)
        if slope is None or slope.dtype.kind != "f":
            return "PRelu slope is not a constant"
        if not slope_keeps_shape(slope.shape, site.shape, site.width):
            return f"PRelu slope of shape {list(slope.shape)} may broadcast the data to a new shape"
        return Link(self, i, slope.astype(np.float64))
