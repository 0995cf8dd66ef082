"""Generate large MLP-stack models straight to disk (external data), for scale tests and benchmarks.

Weights are written in chunks, so generating a model never needs its weights in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

CHUNK = 16 * 2**20  # elements per generated chunk


def _external(name: str, dims: list[int], location: str, offset: int, length: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def write_mlp_stack(path: str | Path, d: int, hidden: int, blocks: int, tokens: int | None = None,
                    slope: float = 1.0, seed: int = 0, opset: int = 17) -> int:
    """Write ``blocks`` residual MLP blocks ``x + fc2(prelu(fc1(x)))`` (d -> hidden -> d) to ``path``.

    ``tokens=None``: 2-D input (batch, d) with Gemm(transB=1) layers, as torch exports nn.Linear on 2-D
    inputs; otherwise a 3-D input (batch, tokens, d) with MatMul + Add, as transformer exports. PReLU
    slopes are scalars set to ``slope``. Returns the bytes of weight data written.
    """
    path = Path(path)
    data_name = path.name + ".data"
    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    with open(path.parent / data_name, "wb") as data:

        def weight(name: str, dims: list[int], std: float) -> str:
            offset, count = data.tell(), int(np.prod(dims))
            for start in range(0, count, CHUNK):
                n = min(CHUNK, count - start)
                data.write((rng.standard_normal(n, dtype=np.float32) * np.float32(std)).tobytes())
            inits.append(_external(name, dims, data_name, offset, count * 4))
            return name

        def small(name: str, value: np.ndarray) -> str:
            inits.append(onnx.numpy_helper.from_array(value.astype(np.float32), name))
            return name

        nodes, x = [], "x"
        for b in range(blocks):
            p = f"block{b}."
            slope_name = small(p + "slope", np.full((1,), slope))
            if tokens is None:
                nodes += [
                    helper.make_node("Gemm", [x, weight(p + "fc1.weight", [hidden, d], d ** -0.5),
                                              small(p + "fc1.bias", rng.standard_normal(hidden) * 0.01)],
                                     [p + "h"], transB=1, name=p + "fc1"),
                    helper.make_node("PRelu", [p + "h", slope_name], [p + "a"], name=p + "act"),
                    helper.make_node("Gemm", [p + "a", weight(p + "fc2.weight", [d, hidden], hidden ** -0.5),
                                              small(p + "fc2.bias", rng.standard_normal(d) * 0.01)],
                                     [p + "m"], transB=1, name=p + "fc2"),
                ]
            else:
                nodes += [
                    helper.make_node("MatMul", [x, weight(p + "fc1.weight", [d, hidden], d ** -0.5)], [p + "h0"],
                                     name=p + "fc1"),
                    helper.make_node("Add", [p + "h0", small(p + "fc1.bias", rng.standard_normal(hidden) * 0.01)],
                                     [p + "h"], name=p + "fc1.add"),
                    helper.make_node("PRelu", [p + "h", slope_name], [p + "a"], name=p + "act"),
                    helper.make_node("MatMul", [p + "a", weight(p + "fc2.weight", [hidden, d], hidden ** -0.5)],
                                     [p + "m0"], name=p + "fc2"),
                    helper.make_node("Add", [p + "m0", small(p + "fc2.bias", rng.standard_normal(d) * 0.01)],
                                     [p + "m"], name=p + "fc2.add"),
                ]
            nodes.append(helper.make_node("Add", [x, p + "m"], [p + "out"], name=p + "residual"))
            x = p + "out"
        written = data.tell()
    shape = ["batch", d] if tokens is None else ["batch", tokens, d]
    nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(nodes, "mlp_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8,
                              producer_name="onnx-collapse synthetic")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return written
