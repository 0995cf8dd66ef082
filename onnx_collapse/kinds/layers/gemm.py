"""Layer kind: ``Gemm`` (transA=0, any transB/alpha/beta, bias [N], [1,N], scalar or none); 2-D input."""

from __future__ import annotations

from dataclasses import dataclass

from ...emit import Emission, GemmEmission, MatMulEmission
from ...graph import GraphView, attribute
from ...layout import Features
from ...linalg import Affine
from ..base import Layer, LayerKind, register_layer, stored_bias
from .common import bias_fits, float_matrix

GEMM_WITHOUT_C = 11  # Gemm's bias C is optional from opset 11


@dataclass(frozen=True)
class GemmParams:
    """How a Gemm stores its map: ``W = alpha * (B, transposed if transB)``, ``b = beta * C``."""

    transposed: bool = False
    alpha: float = 1.0
    beta: float = 1.0


@register_layer
class Gemm(LayerKind):
    name = "gemm"
    op_types = ("Gemm",)

    def match(self, view: GraphView, i: int) -> Layer | str:
        node = view.nodes[i]
        x, weight = node.inputs[0].name, node.inputs[1].name
        if attribute(node, "transA", 0):
            return "Gemm with transA=1 (input is transposed)"
        if view.is_constant(x):
            return "Gemm input A is a constant"
        meta = view.constant_meta(weight)
        if not float_matrix(meta):
            return "Gemm weight B is not a constant, non-empty float matrix"
        (rows, cols), dtype = meta
        transposed = bool(attribute(node, "transB", 0))
        n_in, n_out = (cols, rows) if transposed else (rows, cols)
        bias = None
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = node.inputs[2].name
            c_meta = view.constant_meta(bias)
            if c_meta is None:
                return "Gemm bias C is not a constant"
            c_shape = c_meta[0]
            if len(c_shape) > 2 or (len(c_shape) == 2 and c_shape[0] != 1):
                return f"Gemm bias C of shape {list(c_shape)} depends on the batch row"
            if not bias_fits(c_shape, n_out) or c_meta[1] != dtype:
                return f"Gemm bias C of shape {list(c_shape)} does not broadcast over the output features"
        params = GemmParams(transposed, float(attribute(node, "alpha", 1.0)), float(attribute(node, "beta", 1.0)))
        layout = Features(input_rank=2, positions=view.positions(node.outputs[0].name, -1) or 1)
        return Layer(self, (i,), x, node.outputs[0].name, n_in, n_out, dtype, weight, bias,
                     bias_rank=0 if bias is None else 2, layout=layout, params=params)

    def affine(self, layer: Layer, view: GraphView) -> Affine:
        params: GemmParams = layer.params
        w = view.constant(layer.weight)
        b = stored_bias(view, layer)
        return Affine(w.T if params.transposed else w, None if b is None else b * params.beta, params.alpha)

    def node_macs(self, node, shape_of, per_sample):
        """Output elements x the contracted length (B's rows, or its columns with transB)."""
        elements = per_sample(node.output[0])
        if elements is None:
            return None
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        weight = shape_of(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if weight is None or len(weight) != 2 or None in weight:
            return None
        return round(elements * weight[1 if trans_b else 0])

    def macs_tensors(self, node) -> list[str]:
        return [n for n in (*node.output[:1], *node.input[:1]) if n]

    def emission(self, layer: Layer, prefix: str, opset: int, bias_rank: int, has_bias: bool,
                 n_matrices: int) -> Emission:
        """Gemm while every bias keeps the output 2-D (a Gemm without C needs opset 11); else MatMul."""
        if bias_rank <= 2 and (opset >= GEMM_WITHOUT_C or (n_matrices == 1 and has_bias)):
            return GemmEmission(prefix, bias_rank, layer.layout)
        return MatMulEmission(prefix, bias_rank, layer.layout)
