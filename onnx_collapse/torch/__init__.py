"""Optional training side (needs ``pip install onnx-collapse[torch]``); the core never imports it."""

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("onnx_collapse.torch needs PyTorch: pip install 'onnx-collapse[torch]'") from exc

from .collapsible import collapse_penalty, collapsible_slopes, make_collapsible, snap_slopes
from .export import export_onnx

__all__ = ["collapse_penalty", "collapsible_slopes", "export_onnx", "make_collapsible", "snap_slopes"]
