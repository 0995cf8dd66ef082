"""Plain data that passes hand on: chains found (segments), and the rewrites (plans) written for them.

A plan is one form of a candidate (``candidates.Candidate``). Rewrite, verification and the report read
these; none of them imports a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .emit import Emission
from .graph import GraphPath
from .kinds import Layer, Link, Slope
from .kinds.base import EmissionFor
from .linalg import Factored

if TYPE_CHECKING:
    from .candidates import Candidate, Outcome


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
        return [link for link in self.all_links() if isinstance(link.map, Slope)]

    def node_positions(self) -> tuple[int, ...]:
        return tuple(sorted({i for layer in self.layers for i in layer.nodes}
                            | {link.node for link in self.all_links()}))


@dataclass
class FoldPlan:
    """A rewrite of one graph: remove the nodes at positions ``removed``, insert ``nodes`` (with new
    ``initializers``) computing ``output`` from ``input``.

    ``exact`` is the float64 map the removed nodes computed (kept factored); ``outcome`` what the form
    stores and measured. ``candidate`` and ``fallback`` (the candidate's form this one replaced, used if
    verification rejects this one) are set when the candidate takes the plan (``Candidate.push``).
    """

    outcome: Outcome
    graph: GraphPath  # which (sub)graph the plan rewrites
    removed: tuple[int, ...]
    input: str
    output: str
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    dtype: np.dtype
    exact: Factored | None  # None once no later pass needs it (no truncation, no calibration): memory
    emit: Emission
    emission_for: EmissionFor | None = None  # writes the same map in another form (dense or pair)
    fallback: FoldPlan | None = field(default=None, repr=False)
    candidate: Candidate | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        """Drop the new tensors and exact maps (its own and its fallback's) once the rewritten model holds what
        it needs: they can be as large as the weights. The plan cannot be applied again after this."""
        self.initializers, self.exact = [], None
        if self.fallback is not None:
            self.fallback.release()

    @property
    def rows(self) -> int:
        """Rows of the written map as a matrix: its input features times the emission's rows per feature."""
        return self.candidate.chain.dims[0] * self.emit.layout.group_unit
