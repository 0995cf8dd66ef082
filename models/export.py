"""Regenerate the example models in this folder (``make models``; needs the torch extra).

Every model is exported by torch's default (dynamo) exporter with seeded weights and a dynamic batch; the
issue-10/11 cases also by TorchScript (``*_torchscript``) and, where onnxsim is installed, after onnxsim. Slopes are set by hand to what a LayerCollapse-trained model reaches (1.0), or to values that must not
fold. The exporter's per-node stack traces (absolute paths of this file and of torch, line numbers) are
dropped, so the files depend only on the seeds and the torch version, not on where the repository lies.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import torch
from torch import nn

from onnx_collapse.torch import export_onnx

HERE = Path(__file__).resolve().parent
MACHINE_SPECIFIC = "pkg.torch.onnx.stack_trace"  # node metadata naming files on the exporting machine


def prelu(channels: int, slope: float) -> nn.PReLU:
    act = nn.PReLU(channels)
    nn.init.constant_(act.weight, slope)
    return act


class SharedHidden(nn.Module):
    """fc1's output feeds the activation and a residual Add: the chain must not fold."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(16, 16), prelu(16, 1.0), nn.Linear(16, 16)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(self.act(h)) + h


class TransformerMLP(nn.Module):
    """A transformer-style MLP block on (batch, tokens, d): x + fc2(act(fc1(x)))."""

    def __init__(self, d: int = 32, hidden: int = 128):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), prelu(1, 1.0), nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class TokenPReLU(nn.Module):
    """Per-channel PReLU on a 3-D input: torch puts the channel on axis 1, so the slope is [C, 1]."""

    def __init__(self, tokens: int = 6, d: int = 24):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, 48), prelu(tokens, 1.0), nn.Linear(48, 12)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A ViT-style MLP block with LayerScale on (batch, tokens, d): x + gamma * fc2(act(fc1(x)))."""

    def __init__(self, d: int = 32, hidden: int = 64):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), prelu(1, 1.0), nn.Linear(hidden, d)
        self.gamma = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return x + self.gamma * self.fc2(self.act(self.fc1(x)))


def encoder() -> nn.Module:
    """Three LayerScale MLP blocks: TorchScript shares their identical slopes through Identity nodes."""
    return nn.Sequential(*[Block() for _ in range(3)])


def with_statistics(model: nn.Module) -> nn.Module:
    """Give every BatchNorm running statistics and an affine part that are not the identity."""
    for bn in (m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    return model


def bn_mlp() -> nn.Module:
    """Linear - BatchNorm1d - PReLU(1) - Linear (TorchScript keeps the BatchNormalization)."""
    return with_statistics(nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), prelu(64, 1.0), nn.Linear(64, 10)))


def bn_around() -> nn.Module:
    """BatchNorm1d before the first and after the last layer: absorbed into the fold."""
    return with_statistics(nn.Sequential(nn.BatchNorm1d(32), nn.Linear(32, 64), prelu(1, 1.0), nn.Linear(64, 10),
                                         nn.BatchNorm1d(10)))


def flatten_mlp() -> nn.Module:
    """Linear - PReLU - Flatten - Linear on 2-D features (TorchScript keeps the Flatten)."""
    return nn.Sequential(nn.Linear(32, 64), prelu(64, 1.0), nn.Flatten(1), nn.Linear(64, 10))


def cnn_k3_1_1() -> nn.Module:
    """Conv3x3 - PReLU(1) - Conv1x1 - PReLU(1) - Conv1x1: one 3x3 convolution."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), prelu(16, 1.0), nn.Conv2d(16, 16, 1), prelu(1, 1.0),
                         nn.Conv2d(16, 8, 1))


def cnn_bn() -> nn.Module:
    """Conv3x3(stride 2) - BatchNorm2d - PReLU - Conv1x1, then a ReLU head that must stay."""
    return with_statistics(nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                            prelu(16, 1.0), nn.Conv2d(16, 8, 1), nn.ReLU()))


def cnn_k1_k3() -> nn.Module:
    """Conv1x1 (no bias) - PReLU - Conv3x3 (padded): exact as one 3x3 only because the 1x1 has no bias."""
    return nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), prelu(32, 1.0), nn.Conv2d(32, 8, 3, padding=1))


def cnn_k3_k3() -> nn.Module:
    """Conv3x3 (padded) - PReLU - Conv3x3 (valid), wide in the middle: one 5x5 is smaller."""
    return nn.Sequential(nn.Conv2d(2, 64, 3, padding=1), prelu(64, 1.0), nn.Conv2d(64, 2, 3))


# Exports of the same module by both exporters (they differ: Identity-shared constants, kept BN/Flatten),
# and the dynamo export after onnxsim (Reshape -> Gemm -> Reshape), made when onnxsim is installed.
BOTH_EXPORTERS = {"encoder": (encoder, (2, 5, 32)), "bn_mlp": (bn_mlp, (4, 32)), "bn_around": (bn_around, (4, 32)),
                  "flatten_mlp": (flatten_mlp, (4, 32)), "cnn_k3_1_1": (cnn_k3_1_1, (2, 1, 8, 8)),
                  "cnn_bn": (cnn_bn, (2, 1, 8, 8)), "cnn_k1_k3": (cnn_k1_k3, (2, 8, 8, 8)),
                  "cnn_k3_k3": (cnn_k3_k3, (2, 2, 8, 8))}
AFTER_ONNXSIM = ("encoder_dynamo",)


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    x2 = torch.randn(4, 64)
    return {
        "mlp_prelu_channel": (nn.Sequential(nn.Linear(64, 96), prelu(96, 1.0), nn.Linear(96, 10)), x2),
        "mlp_prelu_scalar": (nn.Sequential(nn.Linear(64, 96), prelu(1, 1.0), nn.Linear(96, 10)), x2),
        "transformer_mlp_3d": (TransformerMLP(), torch.randn(2, 5, 32)),
        "token_prelu_3d": (TokenPReLU(), torch.randn(2, 6, 24)),
        "leaky_1": (nn.Sequential(nn.Linear(64, 96), nn.LeakyReLU(1.0), nn.Linear(96, 10)), x2),
        "leaky_099": (nn.Sequential(nn.Linear(64, 96), nn.LeakyReLU(0.99), nn.Linear(96, 10)), x2),
        "three_layer": (nn.Sequential(nn.Linear(64, 128), prelu(128, 1.0), nn.Dropout(0.1),
                                      nn.Linear(128, 128), prelu(1, 1.0), nn.Linear(128, 32)), x2),
        "bottleneck": (nn.Sequential(nn.Linear(256, 24), prelu(24, 1.0), nn.Linear(24, 24), prelu(1, 1.0),
                                     nn.Linear(24, 256)), torch.randn(4, 256)),
        "no_fold_slope_05": (nn.Sequential(nn.Linear(64, 96), prelu(96, 0.5), nn.Linear(96, 10)), x2),
        "no_fold_shared": (SharedHidden(), torch.randn(4, 16)),
    }


def exporter_models() -> dict[str, tuple[nn.Module, torch.Tensor, bool]]:
    """name -> (module, example input, dynamo?) for every model exported by both exporters."""
    torch.manual_seed(1)
    found = {}
    for name, (make, shape) in BOTH_EXPORTERS.items():
        module, example = make().eval(), torch.randn(*shape)
        found[f"{name}_dynamo"] = (module, example, True)
        found[f"{name}_torchscript"] = (module, example, False)
    return found


def simplify(path: Path, out: Path) -> bool:
    """Write ``path`` simplified by onnxsim to ``out``; False when onnxsim is not installed."""
    try:
        import onnxsim
    except ImportError:
        return False
    simplified, ok = onnxsim.simplify(onnx.load(str(path)))
    if not ok:
        raise RuntimeError(f"onnxsim could not check {path}")
    onnx.save_model(simplified, str(out))
    return True


def write(path: Path, model: nn.Module, example: torch.Tensor, dynamo: bool = True) -> None:
    """Export ``model`` to ``path`` without the exporter's per-node stack traces (absolute paths, line
    numbers), so the file depends only on the seeds and the torch version."""
    exported = export_onnx(model, example, path, dynamo=dynamo)
    for node in exported.graph.node:
        kept = [p for p in node.metadata_props if p.key != MACHINE_SPECIFIC]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save_model(exported, str(path))
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


def main(out_dir: Path = HERE) -> None:
    torch.manual_seed(0)
    for name, (model, example) in models().items():
        write(out_dir / f"{name}.onnx", model, example)
    for name, (model, example, dynamo) in exporter_models().items():
        write(out_dir / f"{name}.onnx", model, example, dynamo)
    for name in AFTER_ONNXSIM:
        if simplify(out_dir / f"{name}.onnx", out_dir / f"{name}_onnxsim.onnx"):
            print(f"wrote {name}_onnxsim.onnx")
        else:
            print(f"skipped {name}_onnxsim.onnx: onnxsim is not installed (pip install -e '.[bench]')")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
