"""Layer kind: ``MatMul`` with a constant 2-D weight, and the bias ``Add`` that follows it (either operand
order, leading dims 1); inputs of any rank (transformer exports are 3-D)."""

from __future__ import annotations

from ...emit import Emission, MatMulEmission
from ...graph import GraphView
from ...layout import Features
from ..base import Layer, LayerKind, register_layer
from .common import float_matrix, following_bias, matmul_node_macs


@register_layer
class MatMul(LayerKind):
    name = "matmul"
    op_types = ("MatMul",)

    def match(self, view: GraphView, i: int) -> Layer | str:
        node = view.nodes[i]
        x, weight = node.inputs[0].name, node.inputs[1].name
        if view.is_constant(x):
            return "MatMul input A is a constant"
        meta = view.constant_meta(weight)
        if not float_matrix(meta):
            return "MatMul weight is not a constant, non-empty float matrix"
        (n_in, n_out), dtype = meta
        nodes, output, bias, bias_rank = (i,), node.outputs[0].name, None, 0
        add = following_bias(view, output, n_out, dtype)
        if add is not None:
            add_i, output, bias, bias_rank = add
            nodes = (i, add_i)
        layout = Features(input_rank=view.rank(x), positions=view.positions(node.outputs[0].name, -1) or 1)
        return Layer(self, nodes, x, output, n_in, n_out, dtype, weight, bias, bias_rank=bias_rank, layout=layout)

    def node_macs(self, node, shape_of, per_sample):
        return matmul_node_macs(node, shape_of, per_sample)

    def macs_tensors(self, node) -> list[str]:
        return [n for n in (*node.output[:1], *node.input[:2]) if n]

    def emission(self, layer: Layer, prefix: str, opset: int, bias_rank: int, has_bias: bool,
                 n_matrices: int) -> Emission:
        return MatMulEmission(prefix, bias_rank, layer.layout)
