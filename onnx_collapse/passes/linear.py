"""Pass: recognise linear layers (Gemm, or MatMul with a constant weight and an optional bias Add)."""

from __future__ import annotations

import numpy as np

from ..graph import GraphIndex, attribute
from ..linalg import Affine
from .base import Context, Linear

FLOAT_TYPES = (np.float16, np.float32, np.float64)


def _float_weight(value: np.ndarray | None) -> bool:
    return value is not None and value.dtype in FLOAT_TYPES


def bias_vector(bias: np.ndarray, n_out: int) -> np.ndarray | None:
    """The per-output-feature vector of a bias that broadcasts over the last axis, else None.

    Accepts shapes [], [1], [N], [1, N], [1, 1, N] ...: all leading dims 1, last dim 1 or N.
    """
    if bias.ndim and (any(d != 1 for d in bias.shape[:-1]) or bias.shape[-1] not in (1, n_out)):
        return None
    return np.broadcast_to(bias.reshape(-1).astype(np.float64), (n_out,)).copy()


def match_gemm(index: GraphIndex, i: int) -> Linear | str:
    """A Linear for Gemm node ``i``, or the reason it is not one."""
    node = index.nodes[i]
    if attribute(node, "transA", 0):
        return "Gemm with transA=1 (input is transposed)"
    if index.is_constant(node.input[0]):
        return "Gemm input A is a constant"
    b = index.constant(node.input[1])
    if not _float_weight(b) or b.ndim != 2:
        return "Gemm weight B is not a constant float matrix"
    alpha = float(attribute(node, "alpha", 1.0))
    beta = float(attribute(node, "beta", 1.0))
    weight = (b.T if attribute(node, "transB", 0) else b).astype(np.float64) * alpha
    bias, stored = None, b.size
    if len(node.input) > 2 and node.input[2]:
        c = index.constant(node.input[2])
        if c is None:
            return "Gemm bias C is not a constant"
        if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            return f"Gemm bias C of shape {list(c.shape)} depends on the batch row"
        bias = bias_vector(c, weight.shape[1])
        if bias is None:
            return f"Gemm bias C of shape {list(c.shape)} does not broadcast over the output features"
        bias, stored = bias * beta, stored + c.size
    return Linear(nodes=(i,), input=node.input[0], output=node.output[0], affine=Affine(weight, bias),
                  dtype=b.dtype, bias_rank=0 if bias is None else 2, is_gemm=True, params=stored)


def match_matmul(index: GraphIndex, i: int) -> Linear | str:
    """A Linear for MatMul node ``i`` (with the bias Add that follows, if any), or the reason it is not one."""
    node = index.nodes[i]
    if index.is_constant(node.input[0]):
        return "MatMul input A is a constant"
    w = index.constant(node.input[1])
    if not _float_weight(w) or w.ndim != 2:
        return "MatMul weight is not a constant float matrix"
    weight = w.astype(np.float64)
    nodes, output, bias, bias_rank, stored = (i,), node.output[0], None, 0, w.size
    add_i = index.sole_consumer(output)
    if add_i is not None and index.nodes[add_i].op_type == "Add":
        add = index.nodes[add_i]
        other = add.input[1] if add.input[0] == output else add.input[0]
        value = index.constant(other)
        if other != output and value is not None and value.dtype == w.dtype:
            vector = bias_vector(value, weight.shape[1])
            if vector is not None:
                nodes, output, bias, bias_rank = (i, add_i), add.output[0], vector, max(value.ndim, 1)
                stored += value.size
    return Linear(nodes=nodes, input=node.input[0], output=output, affine=Affine(weight, bias),
                  dtype=w.dtype, bias_rank=bias_rank, is_gemm=False, params=stored)


MATCHERS = {"Gemm": match_gemm, "MatMul": match_matmul}


class FindLinearLayers:
    """Fills ``ctx.linears``; lists each Gemm/MatMul that is not a foldable linear layer, with why."""

    name = "linear-layers"

    def run(self, ctx: Context) -> None:
        for i, node in enumerate(ctx.index.nodes):
            matcher = MATCHERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if matcher is None:
                continue
            found = matcher(ctx.index, i)
            if isinstance(found, Linear):
                ctx.linears.append(found)
            else:
                ctx.remarks.append((ctx.index.label(i), f"not a linear layer: {found}"))
