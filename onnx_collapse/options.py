"""The user's choices for one optimizer run, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Options:
    """Options for :func:`onnx_collapse.optimize`.

    slope_tol: an activation counts as the identity when every slope satisfies |1 - slope| <= slope_tol.
    verify: compare the optimized model with the original in onnxruntime and revert folds that fail.
    atol, rtol: verification tolerance, |a - b| <= atol + rtol * |b|; None picks a default per dtype.
    seed, check_n: random input generation (used when ``inputs`` is None).
    inputs: path of an .npz file with one array per graph input, used instead of random inputs.
    input_shapes: concrete shapes for inputs with dynamic dims, e.g. {"x": (1, 128, 768)}.
    """

    slope_tol: float = 0.05
    verify: bool = True
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    check_n: int = 3
    inputs: str | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
