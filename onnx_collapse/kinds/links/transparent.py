"""Link kind: ops that pass the features through unchanged at inference: ``Identity`` and ``Dropout``
(no training mode, mask unused)."""

from __future__ import annotations

import numpy as np

from ...graph import GraphView
from ..base import IDENTITY, FeatureMap, LinkKind, Site, register_link


@register_link
class Transparent(LinkKind):
    name = "transparent"
    op_types = ("Identity", "Dropout")

    def match(self, view: GraphView, i: int, site: Site) -> FeatureMap | str:
        node = view.nodes[i]
        if node.op == "Dropout":
            if len(node.outputs) > 1 and node.outputs[1].name and (
                    view.readers(node.outputs[1].name) or node.outputs[1].name in view.output_names):
                return "Dropout's mask is used"
            if len(node.inputs) > 2 and node.inputs[2].name:
                training = view.constant(node.inputs[2].name)
                if training is None or bool(np.any(training)):
                    return "Dropout may run in training mode"
        return IDENTITY
