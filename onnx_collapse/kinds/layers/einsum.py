"""Layer kind: ``Einsum`` (opset 12+) that multiplies its input by a constant 2-D weight, and the bias
``Add`` that follows it (as MatMul's): the input's last axis contracted with one axis of the weight, the
other axes passed through in order, the weight's other axis last (``bsd,df->bsf``, ``...d,df->...f``,
``ij,jk->ik``, the weight first ``df,bsd->bsf``, or stored transposed ``bsd,fd->bsf``). Anything else
(an implicit output, a repeated or reordered index, a contraction of another axis) is not one.

Features are on the last axis, so a fold is written as MatMul nodes (``MatMulEmission``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ...emit import Emission, MatMulEmission
from ...graph import GraphView, attribute
from ...layout import Features
from ...linalg import Affine
from ..base import Layer, LayerKind, register_layer, stored_bias
from .common import float_matrix, following_bias

ELLIPSIS = "..."
TERM = re.compile(r"(?:[A-Za-z]|\.\.\.)*")


@dataclass(frozen=True)
class EinsumParams:
    """How the weight is stored: (n_in, n_out), or (n_out, n_in) when ``transposed``; ``equation`` as given."""

    transposed: bool
    equation: str


def parse(equation: str) -> tuple[list[list[str]], list[str]] | str:
    """The equation's input terms and output term as lists of indices ("..." one index), or why it is
    not one this kind reads (no explicit output, a malformed term)."""
    text = "".join(equation.split())
    if "->" not in text:
        return "Einsum without an explicit output ('->')"
    left, output = text.split("->", 1)
    terms = left.split(",")
    if any(not TERM.fullmatch(t) for t in [*terms, output]):
        return f"Einsum equation {equation!r} is malformed"
    split = [re.findall(r"[A-Za-z]|\.\.\.", t) for t in [*terms, output]]
    return split[:-1], split[-1]


def _sizes(terms: list[list[str]], shapes: list[tuple | None]) -> dict[str, int | None] | None:
    """Each index's size from the inputs' shapes (an ellipsis's dims left out); None if a shape is unknown."""
    sizes: dict[str, int | None] = {}
    for term, shape in zip(terms, shapes):
        if shape is None:
            return None
        letters = [s for s in term if s != ELLIPSIS]
        if len(shape) < len(letters):
            return None
        skip = len(shape) - len(letters)
        dims = list(shape) if ELLIPSIS not in term else (
            list(shape[:term.index(ELLIPSIS)]) + list(shape[term.index(ELLIPSIS) + skip:]))
        for s, d in zip(letters, dims):
            sizes[s] = d if sizes.get(s) is None else sizes[s]
    return sizes


@register_layer
class Einsum(LayerKind):
    name = "einsum"
    op_types = ("Einsum",)

    def match(self, view: GraphView, i: int) -> Layer | str:
        node = view.nodes[i]
        equation = attribute(node, "equation", "")
        equation = equation.decode() if isinstance(equation, bytes) else str(equation)
        parsed = parse(equation)
        if isinstance(parsed, str):
            return parsed
        terms, output = parsed
        if len(terms) != 2 or len(node.inputs) != 2:
            return f"Einsum {equation!r} does not have two operands"
        constant = [view.is_constant(t.name) for t in node.inputs]
        if constant.count(True) != 1:
            return (f"Einsum {equation!r} has no constant weight" if not any(constant)
                    else f"Einsum {equation!r} multiplies two constants")
        w_at = constant.index(True)
        x, weight = node.inputs[1 - w_at].name, node.inputs[w_at].name
        x_term, w_term = terms[1 - w_at], terms[w_at]
        meta = view.constant_meta(weight)
        if not float_matrix(meta) or len(w_term) != 2 or ELLIPSIS in w_term:
            return f"Einsum {equation!r}: the weight is not a constant, non-empty float matrix"
        why = self._why_not_linear(x_term, w_term, output)
        if why:
            return f"Einsum {equation!r} is not a linear layer: {why}"
        contracted = x_term[-1]
        transposed = w_term[0] != contracted
        shape, dtype = meta
        n_in, n_out = (shape[1], shape[0]) if transposed else shape
        nodes, out, bias, bias_rank = (i,), node.outputs[0].name, None, 0
        add = following_bias(view, out, n_out, dtype)
        if add is not None:
            add_i, out, bias, bias_rank = add
            nodes = (i, add_i)
        rank = view.rank(x) if ELLIPSIS in x_term else len(x_term)
        layout = Features(input_rank=rank, positions=view.positions(node.outputs[0].name, -1) or 1)
        return Layer(self, nodes, x, out, n_in, n_out, dtype, weight, bias, bias_rank=bias_rank, layout=layout,
                     params=EinsumParams(transposed, equation))

    @staticmethod
    def _why_not_linear(x_term: list[str], w_term: list[str], output: list[str]) -> str:
        """"" when the equation contracts the input's last axis with one weight axis and passes every other
        input axis through in order, the weight's other axis last; else what differs."""
        if len(set(x_term)) != len(x_term) or w_term[0] == w_term[1]:
            return "an index repeats within an operand"
        if not x_term or x_term[-1] == ELLIPSIS or x_term[-1] not in w_term:
            return "the input's last axis is not contracted with the weight"
        kept = w_term[1] if w_term[0] == x_term[-1] else w_term[0]
        if kept in x_term:
            return "the weight's other axis also indexes the input"
        if output != [*x_term[:-1], kept]:
            return (f"the output {''.join(output)!r} is not the input's other axes in order, then the weight's "
                    f"({''.join([*x_term[:-1], kept])!r})")
        return ""

    def affine(self, layer: Layer, view: GraphView) -> Affine:
        w = view.constant(layer.weight)
        return Affine(w.T if layer.params.transposed else w, stored_bias(view, layer))

    def node_macs(self, node, shape_of, per_sample):
        """A two-operand Einsum: output elements x the product of the contracted indices' sizes. Other
        Einsums (one operand, three or more) are not counted."""
        parsed = parse(str(next((a.s.decode() for a in node.attribute if a.name == "equation"), "")))
        elements = per_sample(node.output[0]) if node.output else None
        if isinstance(parsed, str) or elements is None or len(parsed[0]) != 2 or len(node.input) != 2:
            return None
        terms, output = parsed
        if any(ELLIPSIS in t for t in terms) and ELLIPSIS not in output:
            return None
        sizes = _sizes(terms, [shape_of(name) for name in node.input])
        contracted = {s for t in terms for s in t if s != ELLIPSIS and s not in output}
        if sizes is None or any(sizes.get(s) is None for s in contracted):
            return None
        return round(elements * int(np.prod([sizes[s] for s in contracted], dtype=np.int64)))

    def macs_tensors(self, node) -> list[str]:
        return [n for n in (*node.output[:1], *node.input) if n]

    def emission(self, layer: Layer, prefix: str, opset: int, bias_rank: int, has_bias: bool,
                 n_matrices: int) -> Emission:
        return MatMulEmission(prefix, bias_rank, layer.layout)
