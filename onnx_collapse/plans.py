"""Plain data that passes hand on: chains found, and the rewrites (plans) they decided on.

Rewrite, verification and the report read these; none of them imports a pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .emit import Emission
from .graph import GraphPath
from .kinds import Layer, Link
from .kinds.base import EmissionFor
from .linalg import Factored
from .report import FoldRecord


@dataclass
class Segment:
    """Consecutive layers that may fold into one; ``links[k]`` are the nodes between layer k and k+1,
    ``lead``/``trail`` affine links right before the first layer / after the last one."""

    layers: list[Layer]
    links: list[tuple[Link, ...]]
    lead: tuple[Link, ...] = ()
    trail: tuple[Link, ...] = ()
    input: str = ""  # what the segment reads and writes (the first layer's input / last layer's output
    output: str = ""  # unless lead/trail links extend it)

    def all_links(self) -> list[Link]:
        return [*self.lead, *(link for gap in self.links for link in gap), *self.trail]

    def activations(self) -> list[Link]:
        return [link for link in self.all_links() if link.slope is not None]

    def node_positions(self) -> tuple[int, ...]:
        return tuple(sorted({i for layer in self.layers for i in layer.nodes}
                            | {link.node for link in self.all_links()}))


@dataclass
class FoldPlan:
    """A rewrite of one graph: remove the nodes at positions ``removed``, insert ``nodes`` (with new
    ``initializers``) computing ``output`` from ``input``.

    ``exact`` is the float64 map the removed nodes computed (kept factored); ``fallback`` is the exact
    plan a truncating plan replaced, used if verification rejects the truncation.
    """

    record: FoldRecord
    graph: GraphPath  # which (sub)graph the plan rewrites
    removed: tuple[int, ...]
    input: str
    output: str
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    dtype: np.dtype
    exact: Factored | None  # None once no later pass needs it (no truncation, no calibration): memory
    emit: Emission
    fallback: FoldPlan | None = None
    emission_for: EmissionFor | None = None  # writes the same map in another form (dense or pair)

    def release(self) -> None:
        """Drop the new tensors and exact maps (its own and its fallback's) once the rewritten model holds what
        it needs: they can be as large as the weights. The plan cannot be applied again after this."""
        self.initializers, self.exact = [], None
        if self.fallback is not None:
            self.fallback.release()

    @property
    def rows(self) -> int:
        """Rows of the written map as a matrix: its input features times the emission's rows per feature."""
        return self.record.dims[0] * self.emit.layout.group_unit
