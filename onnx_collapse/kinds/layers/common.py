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
