"""Inference speed of optimized models in onnxruntime, next to the MAC ratio.

    python benchmarks/inference_speed.py [--repeats 30] [--workloads vit,bert,bottleneck]

Workloads, exported by torch's default exporter on the fly (nothing committed), with PReLU slopes at 1:
a ViT-B/16-shaped MLP stack (12 residual blocks d=768 -> 3072 -> 768, 197 tokens), a BERT-base-shaped one
(same blocks, 128 tokens), each at batch 1 and 8, and a bottleneck MLP where the factor pair is chosen.
onnxruntime runs on the CPU with its default graph optimizations (as deployed), original and optimized
alternating, warm-up excluded; latencies are medians. Also file size and the session's peak memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from measure import python_measured
from torch import nn

import onnx_collapse
from onnx_collapse.io import file_size
from onnx_collapse.torch import export_onnx


class Block(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.PReLU(1, init=1.0), nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


def mlp_stack(d: int = 768, hidden: int = 3072, blocks: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(Block(d, hidden) for _ in range(blocks)))


def bottleneck(width: int = 2048, narrow: int = 128, blocks: int = 4) -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(blocks):
        layers += [nn.Linear(width, narrow), nn.PReLU(1, init=1.0), nn.Linear(narrow, narrow), nn.PReLU(1, init=1.0),
                   nn.Linear(narrow, width), nn.ReLU()]
    return nn.Sequential(*layers)


WORKLOADS = {
    # name: (model factory, example input shape without batch, batches)
    "vit": (mlp_stack, (197, 768), (1, 8)),
    "bert": (mlp_stack, (128, 768), (1, 8)),
    "bottleneck": (bottleneck, (2048,), (1, 64)),
}


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    # Two sessions take turns on two cores: threads left spinning by one would slow the other.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latencies(paths: list[Path], x: np.ndarray, repeats: int) -> list[float]:
    """Median seconds per run of each model, alternating between them so drift hits all alike."""
    sessions = [_session(p) for p in paths]
    for s in sessions:
        for _ in range(3):
            s.run(None, {"x": x})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for s, t in zip(sessions, times):
            start = time.perf_counter()
            s.run(None, {"x": x})
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


SESSION = """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 2
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
s.run(None, {"x": np.zeros(tuple(int(d) for d in sys.argv[2].split("x")), np.float32)})
"""


def session_peak(path: Path, shape: tuple[int, ...]) -> int:
    """Peak resident bytes of a process that loads the model in onnxruntime and runs it once."""
    return python_measured(SESSION, path, "x".join(map(str, shape)))[1]


def run(names: list[str], repeats: int) -> list[dict]:
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            factory, shape, batches = WORKLOADS[name]
            src, dst = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.collapsed.onnx"
            export_onnx(factory(), torch.randn(2, *shape), src)
            _, report = onnx_collapse.optimize(src, output=dst, input_shapes={"x": (1, *shape)}, check_n=1)
            assert report.verification.passed
            mac_ratio = report.before.linear_macs / report.after.linear_macs
            forms = sorted({f.form for f in report.folded})
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
                t_orig, t_opt = latencies([src, dst], x, repeats)
                rows.append({
                    "workload": name, "batch": batch, "forms": forms, "mac_ratio": mac_ratio,
                    "ms_original": 1e3 * t_orig, "ms_optimized": 1e3 * t_opt, "speedup": t_orig / t_opt,
                    "speedup_vs_macs": (t_orig / t_opt) / mac_ratio,
                    "file_mb": (file_size(src) / 2**20, file_size(dst) / 2**20),
                    "session_peak_mb": (session_peak(src, x.shape) / 2**20, session_peak(dst, x.shape) / 2**20),
                })
            gc.collect()
    return rows


def print_table(rows: list[dict]) -> None:
    print("| workload | batch | fold | MAC ratio | original ms | optimized ms | speed-up | speed-up / MAC ratio "
          "| file MB | session peak MB |")
    print("|---" * 10 + "|")
    for r in rows:
        print(f"| {r['workload']} | {r['batch']} | {'+'.join(r['forms'])} | {r['mac_ratio']:.2f}x "
              f"| {r['ms_original']:.2f} | {r['ms_optimized']:.2f} | {r['speedup']:.2f}x | {r['speedup_vs_macs']:.2f} "
              f"| {r['file_mb'][0]:.1f} -> {r['file_mb'][1]:.1f} "
              f"| {r['session_peak_mb'][0]:.0f} -> {r['session_peak_mb'][1]:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = run(args.workloads.split(","), args.repeats)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
