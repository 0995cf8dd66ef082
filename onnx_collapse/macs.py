"""Multiply-accumulates of a model's layer-kind nodes (Conv, Gemm, MatMul ...: each kind counts its ops) and
ConvTranspose nodes, counted from the shapes the model really has.

Shape inference leaves dims that depend on the input unknown (an OCR model's line width, a detector's image
size), and a convolution's cost is its output size. Where a node's size is unknown, one onnxruntime run on
one input set the user gave (the first calibration row, the first ``inputs`` set, or seeded values at the
given ``input_shapes``) measures the shapes it needs. Counts are per sample: MACs of one run divided by its
batch size (axis 0 of the first input). Nothing is guessed: a node whose size stays unknown is listed as
uncounted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import calibrate as calibration
from .errors import CollapseError
from .graph import elements_per_sample, fixed_batch, sized
from .inputs import fixed_dim, graph_inputs, make_feeds
from .io import ModelSource
from .kinds import LAYER_KINDS
from .runner import capture_batches

OTHER_OPS = ("ConvTranspose",)  # counted here; the layer kinds' ops are counted by their kinds (node_macs)


def counted(op: str) -> bool:
    """True for an op of the default domain whose MACs are counted: a layer kind's, or ConvTranspose."""
    return op in OTHER_OPS or LAYER_KINDS.for_op(op) is not None

Shape = tuple[int | None, ...]


class ShapeProbe:
    """The input set shapes are measured on, made on first use (a model whose sizes are all known never
    reads it), and how the report names it (``x[1,3,48,320] (the first calibration row)``). ``problem``
    says why it could not be made or run, if so."""

    def __init__(self, make: Callable[[], Mapping[str, np.ndarray]], where: str, origin: str):
        self._make, self.where, self.origin = make, where, origin
        self._feed: dict[str, np.ndarray] | None = None
        self.problem: str | None = None

    @property
    def feed(self) -> dict[str, np.ndarray]:
        if self._feed is None:
            self._feed = dict(self._make())
        return self._feed

    @property
    def basis(self) -> str:
        dims = ", ".join(f"{n}[{','.join(map(str, np.shape(v)))}]" for n, v in self.feed.items())
        return f"{dims} ({self.where})"

    @property
    def batch(self) -> int:
        first = next(iter(self.feed.values()), None)
        return int(first.shape[0]) if first is not None and np.ndim(first) and first.shape[0] else 1


@dataclass
class MacCount:
    """MACs per sample of the counted nodes, by node label; ``uncounted``: nodes whose size is unknown."""

    total: int = 0
    per_node: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)
    basis: str = "static shapes"


def _prod(dims: Sequence[int]) -> int:
    return int(np.prod(dims, dtype=np.int64)) if len(dims) else 1


def node_macs(node: onnx.NodeProto, shape_of: Callable[[str], Shape | None],
              per_sample: Callable[[str], float | None]) -> int | None:
    """Multiply-accumulates of ``node`` per sample; None when a size it needs is unknown.

    ``shape_of``: a tensor's shape with every dim past axis 0 known (else None); ``per_sample``: its
    elements per sample. An op a layer kind handles is counted by that kind (``LayerKind.node_macs``:
    Conv: output elements x (input channels per group x kernel); Gemm, MatMul: output elements x the
    contracted length); ConvTranspose: input elements x (output channels per group x kernel).
    """
    kind = LAYER_KINDS.for_op(node.op_type)
    if kind is not None:
        return kind.node_macs(node, shape_of, per_sample)
    if node.op_type == "ConvTranspose":
        elements = per_sample(node.input[0])
        weight = shape_of(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if elements is None or weight is None or len(weight) < 3 or None in weight:
            return None
        return round(elements * _prod(weight[1:]))
    return None


def _needed(node: onnx.NodeProto) -> list[str]:
    """The tensors whose shapes a counted node's MACs need, and its data input (a layer's forms are timed at
    its input's shape, ``timing``)."""
    kind = LAYER_KINDS.for_op(node.op_type)
    names = kind.macs_tensors(node) if kind is not None else [*node.output[:1], *node.input[:1]]
    return list(dict.fromkeys(n for n in [*names, *node.input[:1]] if n))


def unknown_tensors(graph: onnx.GraphProto, shapes: Mapping[str, Sequence[int | None]]) -> list[str]:
    """Tensors the counted nodes of ``graph`` read or write whose static shape is unknown past axis 0 (the
    batch, which the counts divide out)."""
    wanted = []
    for node in graph.node:
        if counted(node.op_type) and node.domain in ("", "ai.onnx"):
            for name in _needed(node):
                shape = shapes.get(name)
                if shape is None or None in list(shape)[1:]:
                    wanted.append(name)
    return list(dict.fromkeys(wanted))


def measure(source: ModelSource, names: Sequence[str], probe: ShapeProbe) -> dict[str, tuple[int, ...]]:
    """Shapes of tensors ``names`` of the main graph in one onnxruntime run on ``probe``'s input set.

    The model is run with those tensors as extra outputs (only their shapes are kept). CollapseError,
    naming the input set, when onnxruntime cannot run it.
    """
    try:
        values = capture_batches(source, (), {}, [probe.feed], None, optimized=False, keep=names)[0]
    except CollapseError as exc:
        raise CollapseError(f"cannot measure layer sizes on {probe.origin} ({probe.basis}): "
                            f"{str(exc).split(': ', 1)[-1]}") from None
    return {name: tuple(np.shape(values[name])) for name in names if name in values}


def count(graph: onnx.GraphProto, static: Mapping[str, Sequence[int | None]],
          measured: Mapping[str, Sequence[int]] | None = None, batch: int = 1,
          label: Callable[[int], str] | None = None, basis: str = "static shapes") -> MacCount:
    """MACs per sample of ``graph``'s counted nodes: from ``static`` shapes where every dim is known (axis
    0 read against the graph's fixed batch, else as the batch), else from ``measured`` shapes of one run
    on ``batch`` samples."""
    measured = measured or {}
    static_batch = fixed_batch(graph)
    stored = {t.name: tuple(t.dims) for t in graph.initializer}

    def found(name: str) -> tuple[Shape, int | None] | None:
        if name in stored:
            return stored[name], 1
        return sized(static.get(name), measured.get(name), static_batch, batch)

    def shape_of(name: str) -> Shape | None:
        size = found(name)
        return None if size is None else size[0]

    def per_sample(name: str) -> float | None:
        size = found(name)
        return None if size is None or not size[0] else elements_per_sample(*size)

    result = MacCount(basis=basis)
    for i, node in enumerate(graph.node):
        if not counted(node.op_type) or node.domain not in ("", "ai.onnx"):
            continue
        name = label(i) if label is not None else (node.name or f"{node.op_type}_{i}")
        macs = node_macs(node, shape_of, per_sample)
        if macs is None:
            result.uncounted.append(name)
        else:
            result.per_node[name] = result.per_node.get(name, 0) + macs
            result.total += macs
    return result


def probe_for(model: onnx.ModelProto, calibrate, inputs, input_shapes: Mapping[str, tuple[int, ...]],
              seed: int = 0, max_memory: int | None = None, declared: bool = False) -> ShapeProbe | None:
    """One input set to measure shapes on: the first calibration row, the first verification input set, or
    seeded values at ``input_shapes`` when they fix every dynamic dim past axis 0 (axis 0 defaults to 1);
    None when the user gave none of these (with ``declared``: seeded values at the model's own shapes when
    they fix every dim past axis 0). Files are read within ``max_memory`` as verification reads them."""
    if calibrate is not None:
        def first_row() -> dict[str, np.ndarray]:
            arrays = calibration.load_arrays(model, calibrate, max_memory=max_memory)
            return {n: a[:1] for n, a in arrays.items()}
        return ShapeProbe(first_row, "the first calibration row", "the calibration data")
    if inputs is not None:
        return ShapeProbe(lambda: make_feeds(model, inputs, {}, seed, 1, max_memory)[0][0],
                          "the first verification input set", "the verification inputs")
    shapes = dict(input_shapes)
    for info in graph_inputs(model):
        dims = info.type.tensor_type.shape.dim
        if info.name in shapes or not info.type.tensor_type.HasField("shape"):
            continue
        if any(fixed_dim(d) is None for d in dims[1:]):
            return None
        if dims and fixed_dim(dims[0]) is None:
            shapes[info.name] = (1, *(d.dim_value for d in dims[1:]))
    if not input_shapes:
        if not declared:
            return None
        return ShapeProbe(lambda: make_feeds(model, None, shapes, seed, 1, max_memory)[0][0],
                          "seeded random values at the declared shapes", "the declared input shapes")
    return ShapeProbe(lambda: make_feeds(model, None, shapes, seed, 1, max_memory)[0][0],  # within the memory limit
                      "seeded random values at --input-shape", "the given input shapes")
