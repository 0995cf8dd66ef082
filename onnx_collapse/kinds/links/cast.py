"""Link kind: ``Cast`` to the dtype the features already have, which is the identity (exporters leave such
casts behind). A cast to any other dtype rounds or widens the features, so it is not one: a float32 ->
float16 -> float32 round trip ends the chain at its first cast."""

from __future__ import annotations

from ...graph import GraphView, attribute, np_dtype
from ..base import IDENTITY, FeatureMap, LinkKind, Site, register_link


@register_link
class Cast(LinkKind):
    name = "cast"
    op_types = ("Cast",)

    def match(self, view: GraphView, i: int, site: Site) -> FeatureMap | str:
        to = np_dtype(int(attribute(view.nodes[i], "to", 0)))
        if to is None:
            return "Cast to a type with no numpy dtype"
        if site.dtype is None:
            return f"Cast to {to} of features whose dtype is not known"
        if to != site.dtype:
            return f"Cast from {site.dtype} to {to} is not the identity"
        return IDENTITY
