"""Does every exporter and pre-pass fold every chain? Chains found / folded, parameters and speed-up.

    python benchmarks/exporters.py [--repeats 20]

Models (models/export.py's modules, the encoder at a ViT-ish size): a LayerScale MLP encoder (4 blocks,
d=192 -> 768 -> 192 on 50 tokens), Linear-BatchNorm1d-PReLU-Linear, BatchNorm around a Linear-PReLU-Linear,
and Linear-PReLU-Flatten-Linear; slopes at 1. Each is exported by torch's dynamo and TorchScript
exporters, then optionally passed through onnxsim or onnxslim (the bench extra; a missing peer is
reported, not faked), then optimized. Speed-up: onnxruntime (CPU, default graph optimizations, 2
threads), original and optimized alternating, medians. Target: every cell folds every chain of the torch
model, with the parameters of folding the dynamo export directly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from digits import write_table
from inference_speed import latencies
from torch import nn

import onnx_collapse
from onnx_collapse.torch import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
from export import Block, bn_around, bn_mlp, flatten_mlp  # noqa: E402

MODELS = {
    # name: (factory, example shape with batch 2, chains in the torch model)
    "encoder": (lambda: nn.Sequential(*[Block(192, 768) for _ in range(4)]), (2, 50, 192), 4),
    "bn_mlp": (bn_mlp, (2, 32), 1),
    "bn_around": (bn_around, (2, 32), 1),
    "flatten_mlp": (flatten_mlp, (2, 32), 1),
}


def prepass(name: str, src: Path, dst: Path) -> str | None:
    """Run the pre-pass ``name`` on ``src`` into ``dst``; the reason when it cannot run."""
    model = onnx.load(str(src))
    try:
        if name == "onnxsim":
            import onnxsim

            model, ok = onnxsim.simplify(model)
            if not ok:
                return "onnxsim could not check its result"
        elif name == "onnxslim":
            import onnxslim

            model = onnxslim.slim(model)
    except ImportError:
        return f"{name} is not installed (pip install -e '.[bench]')"
    onnx.save_model(model, str(dst))
    return None


def run(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (factory, shape, chains) in MODELS.items():
            module = factory().eval()
            x = torch.randn(*shape)
            for exporter in ("dynamo", "torchscript"):
                exported = Path(tmp) / f"{name}_{exporter}.onnx"
                export_onnx(module, x, exported, dynamo=exporter == "dynamo")
                for pre in ("none", "onnxsim", "onnxslim"):
                    src = Path(tmp) / f"{name}_{exporter}_{pre}.onnx"
                    why = None if pre == "none" else prepass(pre, exported, src)
                    row = {"model": name, "exporter": exporter, "prepass": pre, "chains": chains}
                    if why is not None:
                        rows.append(row | {"skipped": why})
                        continue
                    if pre == "none":
                        src = exported
                    dst = Path(tmp) / f"{name}_{exporter}_{pre}.collapsed.onnx"
                    _, report = onnx_collapse.optimize(src, output=dst, check_n=1)
                    feed = np.random.default_rng(0).standard_normal((8, *shape[1:])).astype(np.float32)
                    t_orig, t_opt = latencies([src, dst], feed, repeats)
                    rows.append(row | {
                        "found": len(report.folds), "folded": len(report.folded),
                        "params": (report.before.params, report.after.params),
                        "passed": report.verification.passed, "speedup": t_orig / t_opt,
                    })
    return rows


def print_table(rows: list[dict]) -> None:
    direct = {r["model"]: r["params"][1] for r in rows
              if r["exporter"] == "dynamo" and r["prepass"] == "none" and "params" in r}
    lines = ["| model | exporter | pre-pass | chains in torch | found | folded | parameters | same as dynamo direct "
             "| verified | speed-up |", "|---" * 10 + "|"]
    for r in rows:
        head = f"| {r['model']} | {r['exporter']} | {r['prepass']} | {r['chains']} "
        if "skipped" in r:
            lines.append(head + f"| skipped: {r['skipped']} | | | | | |")
            continue
        before, after = r["params"]
        lines.append(head + f"| {r['found']} | {r['folded']} | {before:,} -> {after:,} "
                     f"| {'yes' if after == direct[r['model']] else 'NO'} | {'yes' if r['passed'] else 'NO'} "
                     f"| {r['speedup']:.2f}x |")
    write_table("exporters", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    print_table(run(parser.parse_args().repeats))


if __name__ == "__main__":
    main()
