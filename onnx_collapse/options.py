"""The user's choices for one optimizer run, with their defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Options:
    """Options for :func:`onnx_collapse.optimize`.

    slope_tol: an activation counts as the identity when every slope satisfies |1 - slope| <= slope_tol.
    verify: compare the optimized model with the original in onnxruntime and revert folds that fail.
    atol, rtol: verification tolerance, |a - b| <= atol + rtol * |b|; None picks a default per dtype.
    seed, check_n: random input generation (used when ``inputs`` is None).
    inputs: an .npz file (or a dict) with one array per graph input, used instead of random inputs.
    input_shapes: concrete shapes for inputs with dynamic dims, e.g. {"x": (1, 128, 768)}.
    rank_budget: truncate to factor pairs keeping at most this fraction of the targeted layers' dense
        weights, with ranks that minimise the largest relative layer error (ALDS). None: exact folds only.
    max_error: instead of a budget, the smallest model whose every targeted layer stays within this error.
    low_rank: "collapsed" (only folded chains) or "all" (every linear layer) as truncation targets.
    budget_metric: "params" or "macs" (per input row; the same count for linear layers' weights).
    error_metric: "spectral" (sigma_{r+1} / sigma_1, as ALDS) or "frobenius".
    max_groups: allow ALDS's grouped factors with up to this many input-feature groups (1: none).
    allocator: how ``rank_budget`` is shared: "alds" (minimise the largest layer error), or the baselines
        "uniform" (same rank ratio everywhere) and "energy" (same kept spectral energy everywhere).
    metric: "allclose" (every element within atol + rtol |b|) or "top1" (argmax over the last axis agrees
        on at least ``min_agreement`` of the rows, for classifiers with real ``inputs``).
    max_verify_memory: refuse to verify (CollapseError) when the inputs and the tensors computed from them
        would need more than this many bytes, as estimated from the shapes; None: half the available memory.
    """

    slope_tol: float = 0.05
    verify: bool = True
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    check_n: int = 3
    inputs: str | Mapping[str, np.ndarray] | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    rank_budget: float | None = None
    max_error: float | None = None
    low_rank: str = "collapsed"
    budget_metric: str = "params"
    error_metric: str = "spectral"
    max_groups: int = 1
    allocator: str = "alds"
    metric: str = "allclose"
    min_agreement: float = 0.99
    max_verify_memory: int | None = None
