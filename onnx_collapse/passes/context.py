"""What the passes of one graph share: the analysis context, and the protocol a pass follows."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import onnx

from ..allocate import LayerSpectrum
from ..candidates import Candidate
from ..graph import GraphPath, GraphView, proto_subgraphs
from ..kinds import Layer
from ..options import Options
from ..plans import Segment
from ..report import Unfolded

if TYPE_CHECKING:
    from ..calibrate import Statistics


@dataclass
class Context:
    """Everything passes read and write for one graph."""

    model: onnx.ModelProto
    view: GraphView
    options: Options
    opset: int
    path: GraphPath = ()
    names: set[str] | None = None
    layers: list[Layer] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)  # every fold or truncation considered, in order
    notes: list[str] = field(default_factory=list)
    remarks: list[tuple[str, str]] = field(default_factory=list)  # (node, why it is not part of a fold)
    spectra: list[LayerSpectrum] = field(default_factory=list)  # low-rank targets' spectra, when computed
    stops: dict[int, str] = field(default_factory=dict)  # layer's first node -> why its chain ended after it
    unfolded: list[Unfolded] = field(default_factory=list)  # layers no plan folds, with why
    counted: set = field(default_factory=set)  # stored tensors already counted in a planned fold's candidate
    calibration: Statistics | None = None  # streamed statistics of the calibration data (main graph only)
    keep_exact: bool = True  # forms keep their float64 exact maps (False when no pass will read them)
    whitenings: dict = field(default_factory=dict)  # low-rank targets' calibrated metrics, by what they read
    budget: float | None = None  # the rank budget the low-rank pass used (the one a budget search found)
    over_budget: str | None = None  # when even the cheapest options exceed that budget: by how much, in words

    def unchained_layers(self) -> list[Layer]:
        """The layers in no segment (single-layer truncation targets with ``low_rank="all"``)."""
        taken = {i for seg in self.segments for layer in seg.layers for i in layer.nodes}
        return [layer for layer in self.layers if layer.nodes[0] not in taken]

    def single_targets(self) -> list[Layer]:
        """The layers that are low-rank targets of their own: every layer in no segment with
        ``low_rank="all"``, none otherwise (the chains' folds are the other targets)."""
        return self.unchained_layers() if self.options.low_rank == "all" else []

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
        for sub in proto_subgraphs(node):
            names |= all_names(sub)
    return names


def reads_exact(passes, options: Options) -> bool:
    """Whether any of ``passes`` reads plans' exact maps under ``options`` (a pass says so with a
    ``reads_exact(options)`` method); if none does, plans drop them, which can be as large as the weights."""
    return any(p.reads_exact(options) for p in passes if hasattr(p, "reads_exact"))


def pass_stage(p, options: Options, contexts: list[Context]):
    """The progress stage a pass shows while it runs: its ``stage(options, contexts)`` -> (label in a user's
    words, total steps or None, unit or None), or none at all when that is None (a pass that does nothing
    under these options shows nothing); a pass without the method shows its name."""
    from ..progress import stage

    shown = p.stage(options, contexts) if hasattr(p, "stage") else (p.name, None, None)
    return nullcontext() if shown is None else stage(*shown)


class Pass(Protocol):
    """One step of analysis over one graph: reads and extends its context."""

    name: str

    def run(self, ctx: Context) -> None: ...


class GlobalPass(Protocol):
    """A step that needs every graph at once (e.g. a budget shared by all layers)."""

    name: str

    def run_all(self, contexts: list[Context]) -> None: ...
