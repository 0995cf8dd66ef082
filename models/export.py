"""Regenerate the example models in this folder (``make models``; needs the torch extra).

Every model is exported by torch's default (dynamo) exporter with seeded weights and a dynamic batch.
Slopes are set by hand to what a LayerCollapse-trained model reaches (1.0), or to values that must not
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


def main(out_dir: Path = HERE) -> None:
    torch.manual_seed(0)
    for name, (model, example) in models().items():
        path = out_dir / f"{name}.onnx"
        exported = export_onnx(model, example, path)
        for node in exported.graph.node:
            kept = [p for p in node.metadata_props if p.key != MACHINE_SPECIFIC]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
        onnx.save_model(exported, str(path))
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
