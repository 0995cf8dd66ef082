"""Build the ONNX nodes of a linear map stored as a product of matrices plus an optional bias."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class Emission:
    """How a plan's nodes are written: node-name prefix, Gemm or MatMul, rank of the bias, input rank."""

    prefix: str
    use_gemm: bool
    bias_rank: int
    input_rank: int | None


class RangeError(ValueError):
    """A folded weight does not fit the model's dtype (overflow or non-finite)."""


def cast_checked(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``value`` (float64) cast to ``dtype``; RangeError if it overflows to inf or is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below
        out = np.asarray(value, dtype=np.float64).astype(dtype)
    if not np.all(np.isfinite(out)):
        raise RangeError(f"folded values exceed the range of {np.dtype(dtype).name}")
    return out


def linear_nodes(
    fresh: Callable[[str], str],
    emission: Emission,
    x: str,
    y: str,
    matrices: Sequence[np.ndarray],
    bias: np.ndarray | None,
    dtype: np.dtype,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``y = x @ M1 @ M2 ... + bias``.

    ``emission.use_gemm``: 2-D input; each matrix becomes a Gemm with its weight stored transposed
    (``transB=1``, the layout torch exports and onnxruntime prepacks). Otherwise MatMul nodes
    followed by an Add whose bias has rank ``emission.bias_rank`` (leading dims 1), so N-D inputs
    keep their shape. Raises RangeError if a weight does not fit ``dtype``.
    """
    prefix, use_gemm, bias_rank = emission.prefix, emission.use_gemm, emission.bias_rank
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(value: np.ndarray, what: str) -> str:
        name = fresh(f"{prefix}.{what}")
        inits.append(numpy_helper.from_array(cast_checked(value, dtype), name))
        return name

    current = x
    last = len(matrices) - 1
    for k, matrix in enumerate(matrices):
        tag = "weight" if len(matrices) == 1 else f"factor{k}"
        ends_graph = k == last and (use_gemm or bias is None)
        out = y if ends_graph else fresh(f"{prefix}.{tag}_out")
        if use_gemm:
            inputs = [current, const(np.ascontiguousarray(matrix.T), tag)]
            if k == last and bias is not None:
                inputs.append(const(bias, "bias"))
            nodes.append(helper.make_node("Gemm", inputs, [out], name=fresh(f"{prefix}/Gemm{k}"), transB=1))
        else:
            nodes.append(helper.make_node("MatMul", [current, const(matrix, tag)], [out],
                                          name=fresh(f"{prefix}/MatMul{k}")))
        current = out
    if not use_gemm and bias is not None:
        shaped = bias.reshape([1] * (max(bias_rank, 1) - 1) + [bias.size])
        nodes.append(helper.make_node("Add", [current, const(shaped, "bias")], [y], name=fresh(f"{prefix}/Add")))
    return nodes, inits


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
    rank = emission.input_rank
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
    tail_nodes, tail_inits = linear_nodes(fresh, emission, names["flat"], y, [second], bias, dtype)
    return nodes + tail_nodes, inits + tail_inits
