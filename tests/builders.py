"""In-memory ONNX models for tests: chains of linear layers with chosen ops, biases and activations."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ELEM = {np.float16: TensorProto.FLOAT16, np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


@dataclass
class LayerSpec:
    n_out: int
    op: str = "gemm"  # "gemm" or "matmul"
    trans_b: bool = True
    alpha: float = 1.0
    beta: float = 1.0
    bias: str | None = "vector"  # None, "vector" [N], "row" [1,N], "scalar" [], "one" [1], "rank3" [1,1,N]
    bias_first: bool = False  # matmul: Add(bias, y) instead of Add(y, bias)


@dataclass
class ActSpec:
    kind: str = "prelu"  # "prelu", "leaky", "none"
    slope: float = 1.0
    shape: str = "channel"  # prelu slope: "channel" [C], "row" [1,C], "scalar" [1], "scalar2" [1,1]
    jitter: float = 0.0  # per-channel spread around ``slope``
    dropout: bool = False  # a Dropout (inference: identity) before the activation


@dataclass
class ChainSpec:
    n_in: int
    layers: list[LayerSpec]
    acts: list[ActSpec] = field(default_factory=list)
    input_rank: int = 2
    dtype: type = np.float32
    opset: int = 17


def build(spec: ChainSpec, seed: int = 0) -> onnx.ModelProto:
    """A model ``y = L_n(... act(L_1(x)) ...)`` following ``spec``; weights scaled to keep outputs O(1)."""
    rng = np.random.default_rng(seed)
    dt, nodes, inits = spec.dtype, [], []
    cur, width = "x", spec.n_in

    def const(value, name):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dt), name))
        return name

    for k, layer in enumerate(spec.layers):
        w = rng.standard_normal((width, layer.n_out)) / np.sqrt(width)
        out = f"l{k}"
        bias = {None: None, "vector": (layer.n_out,), "row": (1, layer.n_out), "scalar": (),
                "one": (1,), "rank3": (1, 1, layer.n_out)}[layer.bias]
        b = None if bias is None else rng.standard_normal(bias) * 0.1
        if layer.op == "gemm":
            stored = w.T if layer.trans_b else w
            inputs = [cur, const(stored / layer.alpha, f"w{k}")]
            if b is not None:
                inputs.append(const(b / layer.beta, f"b{k}"))
            nodes.append(helper.make_node("Gemm", inputs, [out], name=f"fc{k}", transB=int(layer.trans_b),
                                          alpha=layer.alpha, beta=layer.beta))
        else:
            mm = out if b is None else f"mm{k}"
            nodes.append(helper.make_node("MatMul", [cur, const(w, f"w{k}")], [mm], name=f"fc{k}"))
            if b is not None:
                pair = [const(b, f"b{k}"), mm] if layer.bias_first else [mm, const(b, f"b{k}")]
                nodes.append(helper.make_node("Add", pair, [out], name=f"fc{k}_bias"))
        cur, width = out, layer.n_out
        if k < len(spec.acts):
            act = spec.acts[k]
            if act.dropout:
                nodes.append(helper.make_node("Dropout", [cur], [f"d{k}"], name=f"drop{k}"))
                cur = f"d{k}"
            if act.kind == "leaky":
                nodes.append(helper.make_node("LeakyRelu", [cur], [f"a{k}"], name=f"act{k}", alpha=act.slope))
                cur = f"a{k}"
            elif act.kind == "prelu":
                shape = {"channel": (width,), "row": (1, width), "scalar": (1,), "scalar2": (1, 1)}[act.shape]
                slope = act.slope + act.jitter * rng.uniform(-1, 1, size=shape)
                nodes.append(helper.make_node("PRelu", [cur, const(slope, f"s{k}")], [f"a{k}"], name=f"act{k}"))
                cur = f"a{k}"
    lead = ["batch"] + [3] * (spec.input_rank - 2) if spec.input_rank >= 2 else []
    out_rank = max(spec.input_rank, 3 if any(la.bias == "rank3" for la in spec.layers) else 1)
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", ELEM[dt], lead + [spec.n_in])],
        [helper.make_tensor_value_info(cur, ELEM[dt], [None] * out_rank)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def mlp(n_in=8, hidden=16, n_out=4, slope=1.0, kind="prelu", **layer_kw) -> onnx.ModelProto:
    """The simplest chain: Gemm - act - Gemm."""
    return build(ChainSpec(n_in, [LayerSpec(hidden, **layer_kw), LayerSpec(n_out, **layer_kw)],
                           [ActSpec(kind=kind, slope=slope)]))


def save_external(model: onnx.ModelProto, path) -> None:
    """Save with every tensor in ``<name>.data`` beside the model."""
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)


def point_external_data_at(path, location: str) -> None:
    """Rewrite a saved model so that its external tensors claim to live at ``location``."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))


def analysed(model: onnx.ModelProto, slope_tol: float = 0.05):
    """The main graph's analysis context after the layer and chain passes (no folds planned)."""
    from onnx_collapse.io import ModelSource
    from onnx_collapse.options import Options
    from onnx_collapse.passes.chains import FindChains
    from onnx_collapse.passes.layers import FindLayers
    from onnx_collapse.pipeline import run_passes

    return run_passes(ModelSource(model), Options(slope_tol=slope_tol), (FindLayers(), FindChains()), ())[0]


def fold_plans(model: onnx.ModelProto) -> list:
    """The fold plans the default passes make for ``model``, every graph's, in order (none applied yet)."""
    from onnx_collapse.candidates import applied
    from onnx_collapse.io import ModelSource
    from onnx_collapse.options import Options
    from onnx_collapse.pipeline import run_passes

    return [p for ctx in run_passes(ModelSource(model), Options()) for p in applied(ctx.candidates)]


def run_model(model: onnx.ModelProto, **feeds) -> list[np.ndarray]:
    """All outputs of ``model`` in onnxruntime (CPU, graph optimizations off)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def two_chains(slope: float) -> onnx.ModelProto:
    """x -> [fc0 - act(slope) - fc1] -> act(0.5, kept) -> [fc2 - act(1) - fc3]: one chain near 1, one exact."""
    return build(ChainSpec(12, [LayerSpec(24), LayerSpec(12), LayerSpec(24), LayerSpec(6)],
                           [ActSpec("leaky", slope), ActSpec("leaky", 0.5), ActSpec("prelu", 1.0)]), seed=3)


def shifted_rows(n: int, width: int, seed: int) -> np.ndarray:
    """Inputs with a mean and unequal variances, so the nonlinearity's effect is far from symmetric."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, width)) * np.linspace(0.5, 2.0, width) + 0.7).astype(np.float32)


Weights = dict[str, "np.ndarray | onnx.TensorProto"]


def parsed(text: str, weights: Weights | None = None, subgraph_weights: dict[str, Weights] | None = None
           ) -> onnx.ModelProto:
    """The model written in ONNX's text format (``onnx.parser.parse_model``) with ``weights`` added, in order, as
    initializers of the main graph and ``subgraph_weights[name]`` as those of the subgraph called ``name``, so
    that random values need not be spelled out in the text. A weight is an array, or a TensorProto of that
    name (for a type numpy lacks)."""
    model = onnx.parser.parse_model(text)
    for name, arrays in {model.graph.name: weights or {}, **(subgraph_weights or {})}.items():
        graph = _graph_named(model.graph, name)
        if graph is None:
            raise ValueError(f"the model has no graph named {name!r}")
        graph.initializer.extend(v if isinstance(v, onnx.TensorProto) else numpy_helper.from_array(np.asarray(v), k)
                                 for k, v in arrays.items())
    return model


def _graph_named(graph: onnx.GraphProto, name: str) -> onnx.GraphProto | None:
    if graph.name == name:
        return graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                found = _graph_named(sub, name)
                if found is not None:
                    return found
    return None


def decaying_classifier() -> onnx.ModelProto:
    """MatMul 32->64, Relu, MatMul 64->10; the first weight's spectrum decays from 1 to 0.01 (seeded)."""
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        clf (float[N, 32] x) => (float[N, 10] y) {
            h = MatMul (x, w1)
            r = Relu (h)
            y = MatMul (r, w2)
        }""")
    rng = np.random.default_rng(4)
    u, _, v = np.linalg.svd(rng.standard_normal((32, 64)), full_matrices=False)
    w1 = (u * np.geomspace(1.0, 0.01, 32)) @ v  # a decaying spectrum: truncation costs little at first
    model.graph.initializer.extend([numpy_helper.from_array(w1.astype(np.float32), "w1"),
                                    numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "w2")])
    return model
