"""Pass: recognise linear layers (Gemm, or MatMul with a constant weight and an optional bias Add)."""

from __future__ import annotations

import numpy as np

from ..graph import GraphIndex, attribute
from .base import Context, Linear

FLOAT_TYPES = (np.float16, np.float32, np.float64)


def _float_matrix(meta) -> bool:
    return meta is not None and meta[1] in FLOAT_TYPES and len(meta[0]) == 2 and 0 not in meta[0]


def bias_fits(shape: tuple[int, ...], n_out: int) -> bool:
    """True for a bias that broadcasts over the last axis: [], [1], [N], [1, N], [1, 1, N] ..."""
    return not shape or (all(d == 1 for d in shape[:-1]) and shape[-1] in (1, n_out))


def match_gemm(index: GraphIndex, i: int) -> Linear | str:
    """A Linear for Gemm node ``i``, or the reason it is not one."""
    node = index.nodes[i]
    if attribute(node, "transA", 0):
        return "Gemm with transA=1 (input is transposed)"
    if index.is_constant(node.input[0]):
        return "Gemm input A is a constant"
    meta = index.constant_meta(node.input[1])
    if not _float_matrix(meta):
        return "Gemm weight B is not a constant, non-empty float matrix"
    (rows, cols), dtype = meta
    transposed = bool(attribute(node, "transB", 0))
    n_in, n_out = (cols, rows) if transposed else (rows, cols)
    bias, params = None, rows * cols
    if len(node.input) > 2 and node.input[2]:
        c_meta = index.constant_meta(node.input[2])
        if c_meta is None:
            return "Gemm bias C is not a constant"
        c_shape = c_meta[0]
        if len(c_shape) > 2 or (len(c_shape) == 2 and c_shape[0] != 1):
            return f"Gemm bias C of shape {list(c_shape)} depends on the batch row"
        if not bias_fits(c_shape, n_out) or c_meta[1] != dtype:
            return f"Gemm bias C of shape {list(c_shape)} does not broadcast over the output features"
        bias, params = node.input[2], params + int(np.prod(c_shape, dtype=np.int64))
    return Linear(nodes=(i,), input=node.input[0], output=node.output[0], n_in=n_in, n_out=n_out, dtype=dtype,
                  bias_rank=0 if bias is None else 2, is_gemm=True, params=params, weight=node.input[1],
                  transposed=transposed, alpha=float(attribute(node, "alpha", 1.0)), bias=bias,
                  beta=float(attribute(node, "beta", 1.0)))


def match_matmul(index: GraphIndex, i: int) -> Linear | str:
    """A Linear for MatMul node ``i`` (with the bias Add that follows, if any), or the reason it is not one."""
    node = index.nodes[i]
    if index.is_constant(node.input[0]):
        return "MatMul input A is a constant"
    meta = index.constant_meta(node.input[1])
    if not _float_matrix(meta):
        return "MatMul weight is not a constant, non-empty float matrix"
    (n_in, n_out), dtype = meta
    nodes, output, bias, bias_rank, params = (i,), node.output[0], None, 0, n_in * n_out
    add_i = index.sole_consumer(output)
    if add_i is not None and index.nodes[add_i].op_type == "Add":
        add = index.nodes[add_i]
        other = add.input[1] if add.input[0] == output else add.input[0]
        b_meta = index.constant_meta(other) if other != output else None
        if b_meta is not None and b_meta[1] == dtype and bias_fits(b_meta[0], n_out):
            nodes, output, bias = (i, add_i), add.output[0], other
            bias_rank = max(len(b_meta[0]), 1)
            params += int(np.prod(b_meta[0], dtype=np.int64))
    return Linear(nodes=nodes, input=node.input[0], output=output, n_in=n_in, n_out=n_out, dtype=dtype,
                  bias_rank=bias_rank, is_gemm=False, params=params, weight=node.input[1], bias=bias)


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
