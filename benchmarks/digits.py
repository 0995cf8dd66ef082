"""Shared by the digits studies: data splits, a collapsible MLP, training, ONNX accuracy."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

from onnx_collapse.torch import collapse_penalty, collapsible_slopes, make_collapsible

SEED = 0


def splits():
    """(train, validation, test) pairs of float32 features in [0, 1] and int64 labels; 60/20/20, seeded."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=SEED, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=SEED,
                                                    stratify=y_rest)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def mlp(hidden: int = 128, depth: int = 4) -> nn.Sequential:
    """64 -> hidden x depth -> 10 with ReLU, turned collapsible (one PReLU slope per layer)."""
    torch.manual_seed(SEED)
    layers, width = [], 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 10))
    return make_collapsible(nn.Sequential(*layers))


def train(model: nn.Module, data, lam: float, epochs: int = 60, penalised=None, lr: float = 2e-3,
          seed: int = SEED, weight_decay: float = 0.0) -> nn.Module:
    """Adam (AdamW with ``weight_decay``) on cross-entropy + lam * collapse_penalty(penalised slopes; default
    all but the first)."""
    torch.manual_seed(seed)
    x, y = (torch.from_numpy(a) for a in data)
    slopes = collapsible_slopes(model)[1:] if penalised is None else penalised
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay else \
        torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if lam > 0 and slopes:
                loss = loss + lam * collapse_penalty(slopes)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def onnx_accuracy(model_or_bytes, x: np.ndarray, y: np.ndarray) -> float:
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(-1) == y).mean())


def layer_weights(model) -> int:
    """Weights of a model's Conv, Gemm and MatMul nodes (their constant second input; biases not counted)."""
    weights = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    return sum(weights.get(n.input[1], 0) for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))


def pyplot():
    """matplotlib's pyplot on a file backend, or None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'onnx-collapse[plot]')")
        return None
    return plt


def save_figure(fig, out_dir: Path, name: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    path = out_dir / name
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


RESULTS = Path(__file__).parent / "results"


def write_table(name: str, lines: list[str]) -> None:
    """Print a markdown table and keep it as results/NAME.md, the file docs/results.md's table is spliced from."""
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(f"table: {RESULTS / name}.md")


def study_main(doc: str, run) -> None:
    """The command line both digits studies share: --epochs and --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    run(args.epochs, args.out)
