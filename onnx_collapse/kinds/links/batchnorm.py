"""Link kind: inference ``BatchNormalization`` (channels on axis 1): after a convolution, or on 2-D features
as TorchScript keeps ``BatchNorm1d`` after a Linear: ``x * gamma / sqrt(var + eps) + (beta - mean * that)``."""

from __future__ import annotations

import numpy as np

from ...graph import GraphView, attribute
from ..base import Elementwise, FeatureMap, LinkKind, Site, register_link


@register_link
class BatchNorm(LinkKind):
    name = "batchnorm"
    op_types = ("BatchNormalization",)

    def match(self, view: GraphView, i: int, site: Site) -> FeatureMap | str:
        node = view.nodes[i]
        if attribute(node, "training_mode", 0) or len([t for t in node.outputs if t.name]) > 1:
            return "BatchNormalization in training mode"
        if site.axis != 1 and site.rank != 2:
            return "BatchNormalization over axis 1, which is not the feature axis here"
        names = [t.name for t in node.inputs[1:5]]
        values = [view.constant(n) for n in names]
        if len(values) != 4 or any(v is None or v.dtype.kind != "f" or v.size not in (1, site.width)
                                   for v in values):
            return "BatchNormalization statistics are not constants of the feature size"
        gamma, beta, mean, var = (np.broadcast_to(v.astype(np.float64).reshape(-1), (site.width,)) for v in values)
        scale = gamma / np.sqrt(var + float(attribute(node, "epsilon", 1e-5)))
        if not np.all(np.isfinite(scale)):
            return "BatchNormalization with a non-finite scale"
        return Elementwise(scale=scale, shift=beta - mean * scale)
