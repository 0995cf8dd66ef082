"""What passes share: the analysis context and the types they hand to each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from ..emit import Emission
from ..graph import GraphIndex, subgraphs
from ..linalg import Affine
from ..options import Options
from ..report import FoldRecord


@dataclass(frozen=True)
class Linear:
    """A recognised linear layer ``y = x @ weight + bias`` made of ``nodes`` (Gemm, or MatMul [+ Add])."""

    nodes: tuple[int, ...]
    input: str
    output: str
    affine: Affine  # float64
    dtype: np.dtype  # storage dtype of the weights
    bias_rank: int  # rank of the stored bias (broadcasting can raise the output's rank); 0 without bias
    is_gemm: bool
    params: int  # elements stored for weight and bias (a scalar bias counts 1)

    @property
    def n_in(self) -> int:
        return self.affine.weight.shape[0]

    @property
    def n_out(self) -> int:
        return self.affine.weight.shape[1]


@dataclass(frozen=True)
class Activation:
    """A PRelu or LeakyRelu between two linear layers; ``slope`` as stored (float64)."""

    node: int
    slope: np.ndarray
    stored: int  # elements stored in the model (a PRelu slope tensor; 0 for LeakyRelu's attribute)

    @property
    def deviation(self) -> float:
        """max |1 - slope|: how far the activation is from the identity."""
        return float(np.max(np.abs(1.0 - self.slope)))


@dataclass(frozen=True)
class Link:
    """What lies between two consecutive linear layers: transparent nodes and at most one activation."""

    nodes: tuple[int, ...]
    activation: Activation | None


@dataclass
class Segment:
    """Consecutive linear layers (and the links between them) that may fold into one."""

    linears: list[Linear]
    links: list[Link]


@dataclass
class FoldPlan:
    """A rewrite: remove ``removed`` nodes, insert ``nodes`` (with ``initializers``) in their place.

    ``affine`` is the exact float64 map the removed nodes computed; ``fallback`` is the exact plan a
    truncating plan replaced, used if verification rejects the truncation.
    """

    record: FoldRecord
    removed: tuple[int, ...]
    input: str
    output: str
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    dtype: np.dtype
    affine: Affine
    emit: Emission
    fallback: FoldPlan | None = None


@dataclass
class Context:
    """Everything passes read and write for one graph."""

    model: onnx.ModelProto
    index: GraphIndex
    options: Options
    opset: int
    linears: list[Linear] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    plans: list[FoldPlan] = field(default_factory=list)
    records: list[FoldRecord] = field(default_factory=list)  # every candidate, folded or not
    notes: list[str] = field(default_factory=list)
    remarks: list[tuple[str, str]] = field(default_factory=list)  # (node, why it is not part of a fold)
    _names: set[str] = field(default_factory=set)

    def fresh_name(self, base: str) -> str:
        """A tensor/node name not used anywhere in the model."""
        if not self._names:
            self._names = _all_names(self.model.graph)
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    names |= {v.name for v in graph.value_info}
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for sub in subgraphs(node):
            names |= _all_names(sub)
    return names


class Pass(Protocol):
    """One step of analysis: reads and extends the context."""

    name: str

    def run(self, ctx: Context) -> None: ...
