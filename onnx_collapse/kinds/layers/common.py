"""Checks shared by the layer kinds of fully connected layers (features on the last axis)."""

from __future__ import annotations

import numpy as np

FLOAT_TYPES = (np.float16, np.float32, np.float64)


def float_matrix(meta) -> bool:
    """True for the (shape, dtype) of a non-empty 2-D float constant."""
    return meta is not None and meta[1] in FLOAT_TYPES and len(meta[0]) == 2 and 0 not in meta[0]


def bias_fits(shape: tuple[int, ...], n_out: int) -> bool:
    """True for a bias that broadcasts over the last axis: [], [1], [N], [1, N], [1, 1, N] ..."""
    return not shape or (all(d == 1 for d in shape[:-1]) and shape[-1] in (1, n_out))


def following_bias(view, output: str, n_out: int, dtype) -> tuple[int, str, str, int] | None:
    """The bias ``Add`` that alone reads ``output`` (either operand order, a constant of ``dtype`` that
    broadcasts over the last axis, leading dims 1), as (its node position, its output, the bias, the
    bias's rank, at least 1); None if there is none."""
    add_i = view.sole_reader(output)
    if add_i is None or view.nodes[add_i].op != "Add" or len(view.nodes[add_i].inputs) != 2:
        return None
    add = view.nodes[add_i]
    a, b = (t.name for t in add.inputs)
    other = b if a == output else a
    b_meta = view.constant_meta(other) if other != output else None
    if b_meta is None or b_meta[1] != dtype or not bias_fits(b_meta[0], n_out):
        return None
    return add_i, add.outputs[0].name, other, max(len(b_meta[0]), 1)


def matmul_node_macs(node, shape_of, per_sample) -> int | None:
    """MACs per sample of a MatMul-like node: output elements x the contracted length (the weight's
    second-to-last dim, else the input's last)."""
    elements = per_sample(node.output[0])
    if elements is None:
        return None
    weight = shape_of(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    a = shape_of(node.input[0])
    if weight is not None and len(weight) >= 1 and weight[-2 if len(weight) >= 2 else 0] is not None:
        k = weight[-2] if len(weight) >= 2 else weight[0]
    elif a is not None and a[-1] is not None:
        k = a[-1]
    else:
        return None
    return round(elements * k)
