"""Build the ONNX nodes of a linear map stored as a product of matrices plus an optional bias."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


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
    prefix: str,
    x: str,
    y: str,
    matrices: Sequence[np.ndarray],
    bias: np.ndarray | None,
    dtype: np.dtype,
    use_gemm: bool,
    bias_rank: int,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``y = x @ M1 @ M2 ... + bias``.

    ``use_gemm``: 2-D input; each matrix becomes a Gemm with its weight stored transposed
    (``transB=1``, the layout torch exports and onnxruntime prepacks). Otherwise MatMul nodes
    followed by an Add whose bias has rank ``bias_rank`` (leading dims 1), so N-D inputs keep
    their shape. Raises RangeError if a weight does not fit ``dtype``.
    """
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
