"""Layer kind: ``MatMul`` with a constant 2-D weight, and the bias ``Add`` that follows it (either operand
order, leading dims 1); inputs of any rank (transformer exports are 3-D)."""

from __future__ import annotations

from ...emit import Emission, MatMulEmission
from ...graph import GraphView
from ..base import Layer, LayerKind, register_layer
from .common import bias_fits, float_matrix


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
        add_i = view.sole_reader(output)
        if add_i is not None and view.nodes[add_i].op == "Add" and len(view.nodes[add_i].inputs) == 2:
            add = view.nodes[add_i]
            a, b = (t.name for t in add.inputs)
            other = b if a == output else a
            b_meta = view.constant_meta(other) if other != output else None
            if b_meta is not None and b_meta[1] == dtype and bias_fits(b_meta[0], n_out):
                nodes, output, bias = (i, add_i), add.outputs[0].name, other
                bias_rank = max(len(b_meta[0]), 1)
        return Layer(self, nodes, x, output, n_in, n_out, dtype, weight, bias, bias_rank=bias_rank,
                     input_rank=view.rank(x), positions=view.positions(node.outputs[0].name, -1) or 1)

    def emission(self, layer: Layer, prefix: str, opset: int, bias_rank: int, has_bias: bool,
                 n_matrices: int) -> Emission:
        return MatMulEmission(prefix, bias_rank, layer.input_rank, layer.positions)
