"""Layer and link kinds, one file each; importing a kind's module registers it (one line per kind).

The order of the lines does not matter: no two kinds may claim one op (``base.Registry`` refuses).
"""
# ruff: noqa: I001 - one registration line per kind

from .base import (IDENTITY, LAYER_KINDS, LINK_KINDS, Elementwise, FeatureMap, Identity, Layer, LayerKind, Link,
                   LinkKind, Regroup, Site, Slope, elementwise, layer_kind_for, link_kind_for)
from .layers import conv  # noqa: F401
from .layers import einsum  # noqa: F401
from .layers import gemm  # noqa: F401
from .layers import matmul  # noqa: F401
from .links import activation  # noqa: F401
from .links import affine  # noqa: F401
from .links import batchnorm  # noqa: F401
from .links import cast  # noqa: F401
from .links import reshape  # noqa: F401
from .links import transparent  # noqa: F401

__all__ = ["IDENTITY", "LAYER_KINDS", "LINK_KINDS", "Elementwise", "FeatureMap", "Identity", "Layer", "LayerKind",
           "Link", "LinkKind", "Regroup", "Site", "Slope", "elementwise", "layer_kind_for", "link_kind_for"]
