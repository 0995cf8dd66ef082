"""What passes share: the analysis context and the types they hand to each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from ..emit import Emission
from ..graph import GraphIndex, GraphPath, subgraphs
from ..linalg import Affine, Factored
from ..options import Options
from ..report import FoldRecord


@dataclass(frozen=True)
class Linear:
    """A recognised linear layer ``y = x @ W + b`` made of ``nodes`` (Gemm, or MatMul [+ Add]).

    Only names and shapes are kept; ``affine()`` reads the values (float64) when a fold needs them.
    ``W = alpha * (stored weight, transposed if ``transposed``)``, ``b = beta * stored bias``.
    """

    nodes: tuple[int, ...]
    input: str
    output: str
    n_in: int
    n_out: int
    dtype: np.dtype  # storage dtype of the weights
    bias_rank: int  # rank of the stored bias (broadcasting can raise the output's rank); 0 without bias
    is_gemm: bool
    params: int  # elements stored for weight and bias (a scalar bias counts 1)
    weight: str
    transposed: bool = False
    alpha: float = 1.0
    bias: str | None = None
    beta: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_in, self.n_out

    def affine(self, index: GraphIndex) -> Affine:
        """The layer's map: the stored weight (a view, possibly of the data file), a float64 bias."""
        w = index.constant(self.weight)
        b = None
        if self.bias is not None:
            raw = index.constant(self.bias)
            b = np.broadcast_to(raw.reshape(-1).astype(np.float64), (self.n_out,)) * self.beta
        return Affine(w.T if self.transposed else w, b, self.alpha)


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
    exact: Factored
    emit: Emission
    fallback: FoldPlan | None = None


@dataclass
class Context:
    """Everything passes read and write for one graph."""

    model: onnx.ModelProto
    index: GraphIndex
    options: Options
    opset: int
    path: GraphPath = ()
    names: set[str] | None = None
    linears: list[Linear] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    plans: list[FoldPlan] = field(default_factory=list)
    records: list[FoldRecord] = field(default_factory=list)  # every candidate, folded or not
    notes: list[str] = field(default_factory=list)
    remarks: list[tuple[str, str]] = field(default_factory=list)  # (node, why it is not part of a fold)

    def fresh_name(self, base: str) -> str:
        """A tensor/node name not used anywhere in the model (the set is shared by all graphs' contexts)."""
        if self.names is None:
            self.names = all_names(self.model.graph)
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every node, tensor and value name in ``graph`` and its subgraphs."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    names |= {v.name for v in graph.value_info}
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for sub in subgraphs(node):
            names |= all_names(sub)
    return names


class Pass(Protocol):
    """One step of analysis over one graph: reads and extends its context."""

    name: str

    def run(self, ctx: Context) -> None: ...


class GlobalPass(Protocol):
    """A step that needs every graph at once (e.g. a budget shared by all layers)."""

    name: str

    def run_all(self, contexts: list[Context]) -> None: ...
