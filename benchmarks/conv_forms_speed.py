"""What each emitted form of a convolution costs in onnxruntime on the CPU, beside its MAC ratio.

    python benchmarks/conv_forms_speed.py [--repeats 30]

One 3x3 convolution (C -> C channels on a 1 x C x H x W input, several sizes) stored as: the dense Conv, a
rank-r pair (Conv3x3 C -> r, then Conv1x1 r -> C), and ALDS's grouped pairs with k = 2, 4, 8 input-channel
groups (Conv3x3 C -> k*j with group=k, then Conv1x1) at the same weight count as the pair. onnxruntime with
default graph optimizations, 2 threads, medians, forms alternating. A grouped Conv can run slower than its
MAC count says; this table is what ``--max-groups`` should be chosen from.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx
from digits import write_table
from inference_speed import latencies
from onnx import TensorProto, helper

from onnx_collapse.kinds.layers.conv import ConvEmission
from onnx_collapse.layout import ConvLayout, Windows

SIZES = ((64, 32), (128, 16), (256, 8))  # (channels, spatial size)


def _model(nodes, inits, channels: int, size: int) -> onnx.ModelProto:
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def forms(channels: int, size: int) -> dict[str, tuple[onnx.ModelProto, int]]:
    """name -> (model, MACs) of each form; pair and grouped forms keep about half the dense weights."""
    rng = np.random.default_rng(0)
    counter = itertools.count()
    fresh = lambda base: f"{base}_{next(counter)}"  # noqa: E731
    emission = ConvEmission("c", 1, ConvLayout(4, window=Windows((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))))
    rows, positions = channels * 9, size * size
    bias = rng.standard_normal(channels)
    out = {"dense": (_model(*emission.linear(fresh, "x", "y", [rng.standard_normal((rows, channels))], bias,
                                             np.float32), channels, size), rows * channels * positions)}
    rank = rows * channels // (2 * (rows + channels))
    out[f"pair r={rank}"] = (_model(*emission.linear(
        fresh, "x", "y", [rng.standard_normal((rows, rank)), rng.standard_normal((rank, channels))], bias,
        np.float32), channels, size), rank * (rows + channels) * positions)
    for k in (2, 4, 8):
        j = max(1, rows * channels // (2 * (rows + k * channels)))
        blocks, second = rng.standard_normal((k, rows // k, j)), rng.standard_normal((k * j, channels))
        out[f"grouped k={k} j={j}"] = (_model(*emission.grouped(fresh, "x", "y", blocks, second, bias, np.float32),
                                              channels, size), (j * rows + k * j * channels) * positions)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    lines = ["| conv | form | MAC ratio | median ms | speed-up | speed-up / MAC ratio |", "|---" * 6 + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        for channels, size in SIZES:
            built = forms(channels, size)
            paths = []
            for name, (model, _) in built.items():
                paths.append(Path(tmp) / f"{channels}_{name.replace(' ', '_')}.onnx")
                onnx.save(model, str(paths[-1]))
            x = np.random.default_rng(1).standard_normal((1, channels, size, size)).astype(np.float32)
            times = latencies(paths, x, args.repeats)
            dense_macs, dense_time = built["dense"][1], times[0]
            for (name, (_, macs)), t in zip(built.items(), times):
                ratio, speedup = dense_macs / macs, dense_time / t
                lines.append(f"| {channels}x{channels} 3x3 on {size}x{size} | {name} | {ratio:.2f}x | {1e3 * t:.3f} "
                             f"| {speedup:.2f}x | {speedup / ratio:.2f} |")
    write_table("conv_forms_speed", lines)


if __name__ == "__main__":
    main()
