"""Build the ONNX nodes of a linear map stored as a product of matrices plus an optional bias."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .layout import Layout


@dataclass(frozen=True)
class Emission(ABC):
    """How a folded map is written back: node-name ``prefix``, the rank of its bias (broadcast over the
    leading axes), and the ``layout`` of the map it writes (its input's rank, output positions, how its
    rows are read: ``layout.Layout``). Subclasses choose the ops."""

    prefix: str
    bias_rank: int
    layout: Layout

    @abstractmethod
    def linear(self, fresh: Callable[[str], str], x: str, y: str, matrices: Sequence[np.ndarray],
               bias: np.ndarray | None, dtype: np.dtype) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """Nodes computing ``y = x @ M1 @ M2 ... + bias`` (dense: one matrix; factor pair: two).
        Raises RangeError if a weight does not fit ``dtype``."""

    def grouped(self, fresh: Callable[[str], str], x: str, y: str, blocks: np.ndarray, second: np.ndarray,
                bias: np.ndarray | None, dtype: np.dtype) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """Nodes for ALDS's grouped factors (see ``grouped_nodes``)."""
        return grouped_nodes(fresh, self, x, y, blocks, second, bias, dtype)

    def const(self, fresh: Callable[[str], str], inits: list[onnx.TensorProto], value: np.ndarray, what: str,
              dtype: np.dtype) -> str:
        """A new initializer holding ``value`` cast to ``dtype``; returns its name."""
        name = fresh(f"{self.prefix}.{what}")
        inits.append(numpy_helper.from_array(cast_checked(value, dtype), name))
        return name


class RangeError(ValueError):
    """A folded weight does not fit the model's dtype (overflow or non-finite)."""


def cast_checked(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``value`` (float64) cast to ``dtype``; RangeError if it overflows to inf or is not finite.

    Subnormal results become 0: they are below the dtype's precision relative to any normal weight, and
    CPUs compute with them up to 100x slower (a 1x1 Conv of a truncated OCR model ran 20x slower than its
    neighbour on 2,769 of them)."""
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below
        out = np.asarray(value, dtype=dtype, order="C")  # one cast, even from a transposed view
    if not np.all(np.isfinite(out)):
        source = np.asarray(value)
        raise RangeError("folded values are not finite (a NaN or infinite weight, or data too degenerate to fit "
                         "to)" if source.dtype.kind == "f" and not np.all(np.isfinite(source)) else
                         f"folded values exceed the range of {np.dtype(dtype).name}")
    if out.dtype.kind == "f" and out.size:
        tiny = np.finfo(out.dtype).tiny
        subnormal = (out != 0) & (np.abs(out) < tiny)
        if subnormal.any():
            out = out.copy() if not out.flags.writeable or out is value else out
            out[subnormal] = 0
    return out


def _chain(emission: Emission, fresh, x: str, y: str, matrices, node_for) -> list[onnx.NodeProto]:
    """One node per matrix, from ``x`` to ``y``: ``node_for(k, tag, input, output, last)`` makes node k."""
    nodes, current = [], x
    for k in range(len(matrices)):
        tag = "weight" if len(matrices) == 1 else f"factor{k}"
        last = k == len(matrices) - 1
        out = y if last else fresh(f"{emission.prefix}.{tag}_out")
        nodes.append(node_for(k, tag, current, out, last))
        current = out
    return nodes


@dataclass(frozen=True)
class MatMulEmission(Emission):
    """MatMul nodes, then an Add whose bias has rank ``bias_rank`` (leading dims 1), so inputs of any
    rank keep their shape (transformer exports are 3-D)."""

    def linear(self, fresh, x, y, matrices, bias, dtype):
        inits: list[onnx.TensorProto] = []
        product = y if bias is None else fresh(f"{self.prefix}.product")

        def matmul(k, tag, current, out, last):
            return helper.make_node("MatMul", [current, self.const(fresh, inits, matrices[k], tag, dtype)], [out],
                                    name=fresh(f"{self.prefix}/MatMul{k}"))

        nodes = _chain(self, fresh, x, product, matrices, matmul)
        if bias is not None:
            shaped = bias.reshape([1] * (max(self.bias_rank, 1) - 1) + [bias.size])
            nodes.append(helper.make_node("Add", [product, self.const(fresh, inits, shaped, "bias", dtype)], [y],
                                          name=fresh(f"{self.prefix}/Add")))
        return nodes, inits


@dataclass(frozen=True)
class GemmEmission(Emission):
    """Gemm nodes for 2-D inputs, weights stored transposed (``transB=1``, the layout torch exports and
    onnxruntime prepacks); the bias goes to the last Gemm."""

    def linear(self, fresh, x, y, matrices, bias, dtype):
        inits: list[onnx.TensorProto] = []

        def gemm(k, tag, current, out, last):
            inputs = [current, self.const(fresh, inits, matrices[k].T, tag, dtype)]
            if last and bias is not None:
                inputs.append(self.const(fresh, inits, bias, "bias", dtype))
            return helper.make_node("Gemm", inputs, [out], name=fresh(f"{self.prefix}/Gemm{k}"), transB=1)

        return _chain(self, fresh, x, y, matrices, gemm), inits


def grouped_nodes(
    fresh: Callable[[str], str],
    emission: Emission,
    x: str,
    y: str,
    blocks: np.ndarray,
    second: np.ndarray,
    bias: np.ndarray | None,
    dtype: np.dtype,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes for ALDS's grouped factorization ``y = concat_g(x_g @ A_g) @ B + bias``.

    ``blocks`` (k, n_in/k, j) are the per-group first factors and ``second`` (k*j, n_out) the dense
    second factor. The input (..., n_in) is reshaped to (..., k, n_in/k) and the group axis moved to
    the front, so one batched MatMul runs k full-size products (rows = the input's rows), then the
    result is moved back and flattened to (..., k*j) for the second factor. Needs an input rank >= 2.
    (Broadcasting over a (..., k, 1, n_in/k) layout instead ran 1.5x slower; benchmarks/grouped_speed.py.)
    """
    rank = emission.layout.input_rank
    if rank is None or rank < 2:
        raise RangeError("grouped factors need an input of known rank >= 2")
    k, width, j = blocks.shape
    lead = [0] * (rank - 1)  # Reshape's 0 copies the input's dim
    names = {t: fresh(f"{emission.prefix}.{t}") for t in
             ("groups_shape", "merge_shape", "group_factors", "grouped", "front", "mixed", "back", "flat")}
    inits = [
        numpy_helper.from_array(np.array(lead + [k, width], dtype=np.int64), names["groups_shape"]),
        numpy_helper.from_array(np.array(lead + [k * j], dtype=np.int64), names["merge_shape"]),
        numpy_helper.from_array(cast_checked(blocks.reshape([k] + [1] * (rank - 2) + [width, j]), dtype),
                                names["group_factors"]),
    ]
    to_front = [rank - 1, *range(rank - 1), rank]
    to_back = [*range(1, rank), 0, rank]
    nodes = [
        helper.make_node("Reshape", [x, names["groups_shape"]], [names["grouped"]],
                         name=fresh(f"{emission.prefix}/SplitGroups")),
        helper.make_node("Transpose", [names["grouped"]], [names["front"]], perm=to_front,
                         name=fresh(f"{emission.prefix}/GroupsFirst")),
        helper.make_node("MatMul", [names["front"], names["group_factors"]], [names["mixed"]],
                         name=fresh(f"{emission.prefix}/GroupMatMul")),
        helper.make_node("Transpose", [names["mixed"]], [names["back"]], perm=to_back,
                         name=fresh(f"{emission.prefix}/GroupsLast")),
        helper.make_node("Reshape", [names["back"], names["merge_shape"]], [names["flat"]],
                         name=fresh(f"{emission.prefix}/MergeGroups")),
    ]
    tail_nodes, tail_inits = emission.linear(fresh, names["flat"], y, [second], bias, dtype)
    return nodes + tail_nodes, inits + tail_inits
