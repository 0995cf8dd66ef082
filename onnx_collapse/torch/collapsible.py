"""The training half of LayerCollapse: PReLU slopes between linear layers and the penalty that drives them to 1.

Recipe::

    model = make_collapsible(model)                # Linear-act-Linear -> Linear-PReLU-Linear
    for x, y in loader:
        loss = F.cross_entropy(model(x), y) + lam * collapse_penalty(model)
        ...
    snap_slopes(model, tol=0.05)                   # optional: slopes within tol of 1 become exactly 1
    export_onnx(model, example, "model.onnx")      # then: onnx-collapse optimize model.onnx small.onnx
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# Where a replaced activation's slope starts: its negative-side slope, or a small leak for smooth ones.
START_SLOPE = {nn.ReLU: 0.0, nn.ReLU6: 0.0, nn.Identity: 1.0}
DEFAULT_START = 0.01  # GELU, SiLU, Tanh, ...: documented start; the penalty moves it from there
MARK = "_onnx_collapse_slope"
SKIPPABLE = (nn.Dropout, nn.Identity, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _family(module: nn.Module | None) -> str | None:
    """"linear" or "conv" (groups = 1) for a layer the optimizer folds, else None."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, CONVS) and module.groups == 1:
        return "conv"
    return None


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _start_slope(act: nn.Module) -> float:
    if isinstance(act, nn.LeakyReLU):
        return float(act.negative_slope)
    if isinstance(act, nn.PReLU):
        return float(act.weight.detach().mean())
    return START_SLOPE.get(type(act), DEFAULT_START)


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.ELU, nn.SELU, nn.CELU,
               nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Sigmoid)


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATIONS)


def _prelu(before: nn.Module, act: nn.Module, per_channel: bool) -> nn.PReLU:
    channels = _width(before) if per_channel else 1
    prelu = nn.PReLU(channels, init=_start_slope(act)).to(before.weight.device, before.weight.dtype)
    setattr(prelu, MARK, True)
    return prelu


def _convert_sequential(seq: nn.Sequential, per_channel: bool) -> int:
    """Replace each activation lying between two Linear layers or two Conv layers (Dropout, Identity and
    BatchNorm may sit around it)."""
    items = list(seq.named_children())
    replaced = 0
    for k, (name, module) in enumerate(items):
        if not _is_activation(module) or getattr(module, MARK, False):
            continue
        before = next((m for _, m in reversed(items[:k]) if not isinstance(m, SKIPPABLE)), None)
        after = next((m for _, m in items[k + 1:] if not isinstance(m, SKIPPABLE)), None)
        if _family(before) is not None and _family(before) == _family(after):
            setattr(seq, name, _prelu(before, module, per_channel))
            replaced += 1
    return replaced


def make_collapsible(model: nn.Module, per_channel: bool = False) -> nn.Module:
    """Give ``model`` LayerCollapse activations, in place, and return it.

    Replaces the activation between consecutive ``nn.Linear`` layers, or consecutive ``nn.Conv1d/2d/3d``
    layers (groups = 1; BatchNorm may stand between), in ``nn.Sequential`` blocks and in MLP-style modules
    with ``fc1``/``act``/``fc2`` attributes, by a PReLU whose slope starts where the old activation was
    (ReLU: 0, LeakyReLU(a): a, others: 0.01). Slopes are one scalar per layer, or one per output feature
    or channel with ``per_channel`` (Linear: for 2-D inputs only, as torch applies per-channel PReLU on
    dim 1). Raises ValueError when no such pattern exists.
    """
    replaced = 0
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            replaced += _convert_sequential(module, per_channel)
        fc1, act, fc2 = (getattr(module, n, None) for n in ("fc1", "act", "fc2"))
        if _family(fc1) is not None and _family(fc1) == _family(fc2) and isinstance(act, nn.Module) \
                and _is_activation(act) and not getattr(act, MARK, False):
            module.act = _prelu(fc1, act, per_channel)
            replaced += 1
    if not replaced:
        raise ValueError(f"make_collapsible: no activation between two nn.Linear or two nn.Conv layers in "
                         f"{type(model).__name__} (looked in nn.Sequential blocks and fc1/act/fc2 modules)")
    return model


def collapsible_slopes(model: nn.Module) -> list[nn.PReLU]:
    """The PReLU modules that make_collapsible inserted, in module order."""
    return [m for m in model.modules() if getattr(m, MARK, False)]


def collapse_penalty(model_or_modules: nn.Module | Iterable[nn.PReLU]) -> torch.Tensor:
    """LayerCollapse's regularizer: sum over collapsible slopes of (1 - alpha)^2.

    Pass the model (every slope make_collapsible inserted) or a chosen subset of those PReLUs.
    """
    modules = collapsible_slopes(model_or_modules) if isinstance(model_or_modules, nn.Module) \
        else list(model_or_modules)
    if not modules:
        raise ValueError("collapse_penalty: no collapsible slopes (call make_collapsible first)")
    return sum(((1.0 - m.weight) ** 2).sum() for m in modules)


@torch.no_grad()
def snap_slopes(model_or_modules: nn.Module | Iterable[nn.PReLU], tol: float = 0.05) -> int:
    """Set slopes within ``tol`` of 1 to exactly 1 and freeze them; returns how many PReLUs were snapped."""
    modules = collapsible_slopes(model_or_modules) if isinstance(model_or_modules, nn.Module) \
        else list(model_or_modules)
    snapped = 0
    for m in modules:
        if float((1.0 - m.weight).abs().max()) <= tol:
            m.weight.fill_(1.0)
            m.weight.requires_grad_(False)
            snapped += 1
    return snapped
