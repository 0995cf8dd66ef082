"""Latency in onnxruntime of one 768x768 layer stored dense, as a factor pair, and as ALDS grouped factors.

    python benchmarks/grouped_speed.py

The factor pair (rank 192) and the grouped form (4 groups of rank 76) hold the same number of weights
(half the dense layer); input (1, 197, 768) as in a ViT-B block. Medians of 200 runs, 2 threads.
"""

from __future__ import annotations

import itertools
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from onnx_collapse.emit import MatMulEmission
from onnx_collapse.layout import Features

D, TOKENS = 768, 197


def _model(nodes, inits) -> bytes:
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, TOKENS, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def forms() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    counter = itertools.count()
    fresh = lambda base: f"{base}_{next(counter)}"  # noqa: E731
    emission = MatMulEmission("layer", 1, Features(3))
    bias = rng.standard_normal(D)
    groups, j = 4, 76
    return {
        "dense 768x768": _model(*emission.linear(fresh, "x", "y", [rng.standard_normal((D, D))], bias, np.float32)),
        "factor pair, rank 192": _model(*emission.linear(
            fresh, "x", "y", [rng.standard_normal((D, 192)), rng.standard_normal((192, D))], bias, np.float32)),
        "grouped, 4 x rank 76": _model(*emission.grouped(
            fresh, "x", "y", rng.standard_normal((groups, D // groups, j)),
            rng.standard_normal((groups * j, D)), bias, np.float32)),
    }


def main() -> None:
    x = np.random.default_rng(1).standard_normal((1, TOKENS, D)).astype(np.float32)
    print("| form | weights | median ms |")
    print("|---|---|---|")
    weights = {"dense 768x768": D * D, "factor pair, rank 192": 192 * 2 * D, "grouped, 4 x rank 76": 76 * D + 4 * 76 * D}
    for name, model in forms().items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        for _ in range(10):
            session.run(None, {"x": x})
        times = []
        for _ in range(200):
            start = time.perf_counter()
            session.run(None, {"x": x})
            times.append(time.perf_counter() - start)
        print(f"| {name} | {weights[name]:,} | {1e3 * statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
