"""ALDS rank allocation vs. uniform rank ratio vs. per-layer energy threshold, at equal weight budgets.

    python benchmarks/alds_budget.py [--epochs 60] [--out benchmarks/out]

Two models with trained weights (scikit-learn digits, seeded): the digits MLP (64 -> 128 x4 -> 10, 2-D,
Gemm layers) and a transformer-shaped MLP stack (each image as 8 tokens of 8 pixels; embedding, two
residual GELU MLP blocks d=32 -> 128 -> 32, mean over tokens, classifier; 3-D MatMul/Add layers). Every
linear layer is a target (``--low-rank all``). For each budget (fraction of the targeted weights kept,
as counted by onnx-collapse) and allocator: the largest predicted per-layer spectral error, the output
error on the test set in onnxruntime (||y' - y|| / ||y||), and test accuracy. The table is printed and
kept in benchmarks/results/alds_budget.md (spliced into docs/results.md by ``make readme-tables``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from digits import (
    SEED,
    layer_weights,
    mlp,
    onnx_accuracy,
    pyplot,
    save_figure,
    splits,
    study_main,
    train,
    write_table,
)
from torch import nn
from torch.nn import functional as F

import onnx_collapse
from onnx_collapse.torch import export_onnx

BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7)
ALLOCATORS = ("alds", "uniform", "energy")


class TokenMLPStack(nn.Module):
    """Transformer-shaped: tokens (B, 8, 8) -> embed 32 -> 2 x (x + fc2(gelu(fc1(x)))) -> mean -> 10."""

    def __init__(self, d: int = 32, hidden: int = 128, blocks: int = 2):
        super().__init__()
        torch.manual_seed(SEED)
        self.embed = nn.Linear(8, d)
        self.blocks = nn.ModuleList(nn.ModuleDict({"fc1": nn.Linear(d, hidden), "fc2": nn.Linear(hidden, d)})
                                    for _ in range(blocks))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = h + block["fc2"](F.gelu(block["fc1"](h)))
        return self.head(h.mean(dim=1))


def output_error(reference: bytes, candidate: bytes, x: np.ndarray) -> float:
    run = [ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (reference, candidate)]
    return float(np.linalg.norm(run[1] - run[0]) / np.linalg.norm(run[0]))


def study(name: str, path: Path, x_test: np.ndarray, y_test: np.ndarray) -> list[dict]:
    original = onnx.load(str(path)).SerializeToString()
    base = onnx_accuracy(original, x_test, y_test)
    rows = []
    for budget in BUDGETS:
        for allocator in ALLOCATORS:
            out, report = onnx_collapse.optimize(path, rank_budget=budget, low_rank="all", allocator=allocator,
                                                 verify=False)
            layers = [f for f in report.folds if f.form is not None]
            rows.append({
                "model": name, "budget": budget, "allocator": allocator,
                "kept": layer_weights(out) / layer_weights(onnx.load(str(path))),
                "max_layer_error": max((f.predicted_error or 0.0) for f in layers if f.status == "folded"),
                "output_error": output_error(original, out.SerializeToString(), x_test),
                "accuracy": onnx_accuracy(out, x_test, y_test), "base_accuracy": base,
            })
    return rows


def run(epochs: int, out_dir: Path) -> list[dict]:
    torch.set_num_threads(2)
    train_set, _, (x_test, y_test) = splits()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        digits_mlp = train(mlp(), train_set, lam=0.0, epochs=epochs)
        export_onnx(digits_mlp, torch.from_numpy(x_test[:2]), Path(tmp) / "mlp.onnx")
        rows += study("digits MLP", Path(tmp) / "mlp.onnx", x_test, y_test)

        tokens = (train_set[0].reshape(-1, 8, 8), train_set[1])
        stack = train(TokenMLPStack(), tokens, lam=0.0, epochs=epochs, penalised=[])
        export_onnx(stack, torch.from_numpy(x_test[:2].reshape(-1, 8, 8)), Path(tmp) / "stack.onnx")
        rows += study("token MLP stack", Path(tmp) / "stack.onnx", x_test.reshape(-1, 8, 8), y_test)
    _print(rows)
    _plot(rows, out_dir)
    return rows


def _print(rows: list[dict]) -> None:
    lines = ["| model | budget | allocator | weights kept | max layer error (pred.) | output error | "
             "test accuracy (uncompressed) |", "|---" * 7 + "|"]
    lines += [f"| {r['model']} | {r['budget']:.0%} | {r['allocator']} | {r['kept']:.1%} | {r['max_layer_error']:.3f} "
              f"| {r['output_error']:.3f} | {100 * r['accuracy']:.2f}% ({100 * r['base_accuracy']:.2f}%) |"
              for r in rows]
    write_table("alds_budget", lines)
    worse = [(r["model"], r["budget"]) for r in rows if r["allocator"] == "uniform" and
             next(a for a in rows if a["model"] == r["model"] and a["budget"] == r["budget"]
                  and a["allocator"] == "alds")["max_layer_error"] > r["max_layer_error"] + 1e-12]
    print(f"budgets where ALDS's max layer error is worse than uniform's: {worse or 'none'}")


def _plot(rows: list[dict], out_dir: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6))
    for ax, model in zip(np.atleast_1d(axes), models):
        for allocator in ALLOCATORS:
            sel = [r for r in rows if r["model"] == model and r["allocator"] == allocator]
            ax.plot([r["budget"] for r in sel], [r["max_layer_error"] for r in sel], marker="o", label=allocator)
        ax.set_title(model)
        ax.set_xlabel("weight budget")
        ax.set_ylabel("max layer error (spectral)")
        ax.legend()
    save_figure(fig, out_dir, "alds_budget.png")


def main() -> None:
    study_main(__doc__, run)


if __name__ == "__main__":
    main()
