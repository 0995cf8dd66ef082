"""ALDS on a convolutional network: allocators at equal weight budgets, and a LayerCollapse CNN folded.

    python benchmarks/alds_cnn.py [--epochs 40] [--out benchmarks/out]

A small ResNet-style CNN (stem 3x3 conv, a residual block of two 3x3 convs at 32 channels, a stride-2 3x3
conv to 64 channels, a residual block at 64, global average pooling, a linear classifier; BatchNorm and
ReLU) is trained in the script (AdamW, weight decay 0.05) on scikit-learn's digits (8x8 images, seeded splits)
and exported by torch.
Every conv and linear layer is a low-rank target (``--low-rank all``). For each budget (fraction of the
targeted weights kept, as counted by onnx-collapse) and allocator (ALDS with up to 4 input-channel groups,
ALDS with plain factor pairs, and the uniform / energy baselines): weights and MACs kept (MACs per image,
from the output sizes), the largest predicted layer error, test accuracy in onnxruntime, and the measured
onnxruntime speed-up beside the MAC ratio (batch 256, 2 threads, medians, original and compressed
alternating). The LayerCollapse row trains a CNN whose Conv3x3 - act - Conv1x1 blocks carry the penalty,
snaps the slopes, and folds each block into one 3x3 convolution.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from digits import SEED, layer_weights, onnx_accuracy, splits, study_main, train, write_table
from inference_speed import latencies
from torch import nn

import onnx_collapse
from onnx_collapse.torch import collapsible_slopes, export_onnx, make_collapsible, snap_slopes

BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7)
WEIGHT_DECAY = 0.05  # AdamW: trained filters with a faster-decaying spectrum, as regularised CNNs have
LC_PENALTY = 10.0
LC_EPOCHS_FACTOR = 3  # Adam moves a slope about lr per step: from ReLU's 0 to 1 takes several hundred steps
ALLOCATORS = {"alds (groups <= 4)": ("alds", 4), "alds (pairs)": ("alds", 1), "uniform": ("uniform", 1),
              "energy": ("energy", 1)}


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class Images(nn.Module):
    """Flat 64-pixel digits as 1x8x8 images, then ``body``."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x.reshape(-1, 1, 8, 8))


def resnet() -> nn.Module:
    torch.manual_seed(SEED)
    return Images(nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), Residual(32),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(), Residual(64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)))


def collapsible_cnn() -> tuple[nn.Module, list]:
    """Conv3x3 - ReLU - [Conv3x3 - act - Conv1x1] - ReLU - [Conv3x3/2 - act - Conv1x1] - ReLU - pool - Linear;
    the acts before the 1x1 convs carry the penalty."""
    torch.manual_seed(SEED)
    body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 32, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    model = Images(body)
    make_collapsible(model)
    slopes = collapsible_slopes(model)  # between stem and conv, before each 1x1, after each 1x1
    return model, [slopes[1], slopes[3]]


def macs_per_image(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of the model's Conv, Gemm and MatMul nodes for one image (from inferred shapes)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(fixed)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = {t.name: list(t.dims) for t in inferred.graph.initializer}
    total = 0
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            total += int(np.prod(weights[node.input[1]])) * int(np.prod(out[2:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in weights:
            total += int(np.prod(weights[node.input[1]]))
    return total


def study(path: Path, x_test, y_test) -> list[dict]:
    original = onnx.load(str(path))
    base_acc, base_macs = onnx_accuracy(original, x_test, y_test), macs_per_image(original)
    batch = np.repeat(x_test, 1 + 256 // len(x_test), axis=0)[:256]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in BUDGETS:
            for label, (allocator, groups) in ALLOCATORS.items():
                out_path = Path(tmp) / "compressed.onnx"
                out, report = onnx_collapse.optimize(path, output=out_path, rank_budget=budget, low_rank="all",
                                                     allocator=allocator, max_groups=groups, verify=False)
                targets = [f for f in report.folds if f.form is not None]
                t_orig, t_new = latencies([path, out_path], batch, repeats=15)
                mac_ratio = base_macs / macs_per_image(out)
                rows.append({
                    "budget": budget, "allocator": label, "kept": layer_weights(out) / layer_weights(original),
                    "macs_kept": 1 / mac_ratio,
                    "max_error": max((f.predicted_error or 0.0) for f in targets if f.status == "folded"),
                    "accuracy": onnx_accuracy(out, x_test, y_test), "base": base_acc,
                    "speedup": t_orig / t_new, "mac_ratio": mac_ratio,
                    "grouped": sum(f.form == "grouped" for f in targets),
                })
    return rows


def layercollapse_row(train_set, x_test, y_test, epochs: int, tmp: Path) -> dict:
    model, penalised = collapsible_cnn()
    train(model, train_set, lam=LC_PENALTY, epochs=LC_EPOCHS_FACTOR * epochs, penalised=penalised)
    slopes = [float(p.weight.detach().mean()) for p in penalised]
    snapped = snap_slopes(penalised, tol=0.05)
    train(model, train_set, lam=0.0, epochs=max(1, epochs // 10), penalised=[])  # brief fine-tune after snapping
    path, out_path = tmp / "lc.onnx", tmp / "lc.collapsed.onnx"
    export_onnx(model, torch.from_numpy(x_test[:2]), path)
    out, report = onnx_collapse.optimize(path, output=out_path)
    batch = np.repeat(x_test, 1 + 256 // len(x_test), axis=0)[:256]
    t_orig, t_new = latencies([path, out_path], batch, repeats=15)
    original = onnx.load(str(path))
    return {"slopes": slopes, "snapped": snapped, "folded": len(report.folded),
            "params": (report.before.params, report.after.params),
            "accuracy": (onnx_accuracy(original, x_test, y_test), onnx_accuracy(out, x_test, y_test)),
            "mac_ratio": macs_per_image(original) / macs_per_image(out), "speedup": t_orig / t_new,
            "verified": report.verification.passed}


def run(epochs: int, out_dir: Path) -> list[dict]:
    torch.set_num_threads(2)
    train_set, _, (x_test, y_test) = splits()
    with tempfile.TemporaryDirectory() as tmp:
        model = train(resnet(), train_set, lam=0.0, epochs=epochs, penalised=[], weight_decay=WEIGHT_DECAY)
        path = Path(tmp) / "resnet.onnx"
        export_onnx(model, torch.from_numpy(x_test[:2]), path)
        rows = study(path, x_test, y_test)
        lc = layercollapse_row(train_set, x_test, y_test, epochs, Path(tmp))
    _print(rows, lc)
    return rows


def _print(rows: list[dict], lc: dict) -> None:
    lines = ["| budget | allocator | weights kept | MACs kept | max layer error (pred.) | test accuracy (uncompressed) "
             "| grouped layers | MAC ratio | onnxruntime speed-up |", "|---" * 9 + "|"]
    lines += [f"| {r['budget']:.0%} | {r['allocator']} | {r['kept']:.1%} | {r['macs_kept']:.1%} | {r['max_error']:.3f} "
              f"| {100 * r['accuracy']:.2f}% ({100 * r['base']:.2f}%) | {r['grouped']} | {r['mac_ratio']:.2f}x "
              f"| {r['speedup']:.2f}x |" for r in rows]
    write_table("alds_cnn", lines)
    write_table("alds_cnn_layercollapse", [
        "| LayerCollapse CNN | penalised slopes (mean) | snapped | blocks folded | parameters | test accuracy "
        "exported -> folded | MAC ratio | onnxruntime speed-up | verified |", "|---" * 9 + "|",
        f"| Conv3x3-act-Conv1x1 x2 | {', '.join(f'{s:.3f}' for s in lc['slopes'])} | {lc['snapped']} "
        f"| {lc['folded']} | {lc['params'][0]:,} -> {lc['params'][1]:,} | {100 * lc['accuracy'][0]:.2f}% -> "
        f"{100 * lc['accuracy'][1]:.2f}% | {lc['mac_ratio']:.2f}x | {lc['speedup']:.2f}x "
        f"| {'yes' if lc['verified'] else 'NO'} |"])


def main() -> None:
    study_main(__doc__, run)


if __name__ == "__main__":
    main()
