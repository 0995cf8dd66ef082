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
    second factor. The input is reshaped to (..., k, 1, n_in/k) so one batched MatMul applies every
    block, then flattened to (..., k*j) for the second factor. Needs the input rank.
    """
    if emission.input_rank is None:
        raise RangeError("grouped factors need the input's rank, which shape inference did not give")
    k, width, j = blocks.shape
    lead = [0] * (emission.input_rank - 1)  # Reshape's 0 copies the input's dim
    split = fresh(f"{emission.prefix}.groups_shape")
    merge = fresh(f"{emission.prefix}.merge_shape")
    inits = [
        numpy_helper.from_array(np.array(lead + [k, 1, width], dtype=np.int64), split),
        numpy_helper.from_array(np.array(lead + [k * j], dtype=np.int64), merge),
        numpy_helper.from_array(cast_checked(blocks, dtype), fresh(f"{emission.prefix}.group_factors")),
    ]
    grouped, mixed, flat = (fresh(f"{emission.prefix}.{t}") for t in ("grouped_in", "grouped_out", "flat"))
    nodes = [
        helper.make_node("Reshape", [x, split], [grouped], name=fresh(f"{emission.prefix}/SplitGroups")),
        helper.make_node("MatMul", [grouped, inits[2].name], [mixed], name=fresh(f"{emission.prefix}/GroupMatMul")),
        helper.make_node("Reshape", [mixed, merge], [flat], name=fresh(f"{emission.prefix}/MergeGroups")),
    ]
    tail_nodes, tail_inits = linear_nodes(fresh, emission, flat, y, [second], bias, dtype)
    return nodes + tail_nodes, inits + tail_inits
