"""Layer kind: ``Conv`` with a constant weight and optional bias, groups = 1, any kernel, stride, padding
(explicit pads, or auto_pad where it is known without the input size), dilation; 1-D, 2-D and 3-D.

Features are the channels (axis 1). As a matrix the weight is (C_in * prod(kernel), C_out), so ALDS's
truncation applies unchanged: a rank-r pair is ``Conv(C_in -> r, kernel)`` then ``Conv1x1(r -> C_out)``,
and k groups of rank j a ``Conv(C_in -> k*j, kernel, group=k)`` then ``Conv1x1``. Chains fold through
``convalg.compose`` (kxk then 1x1, 1x1 then kxk, kxk then kxk where exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ... import convalg
from ...emit import Emission
from ...graph import GraphView, attribute
from ...layout import ConvLayout, Windows
from ...linalg import Affine
from ..base import EmissionFor, Layer, LayerKind, elementwise, register_layer
from .common import FLOAT_TYPES


def explicit_pads(node, kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...]
                  ) -> tuple[int, ...] | str:
    """The node's begin+end pads; auto_pad SAME_* only at stride 1, where they do not depend on the input."""
    mode = attribute(node, "auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    spatial = len(kernel)
    if mode in ("NOTSET", ""):
        pads = tuple(attribute(node, "pads", [0] * (2 * spatial)))
        return pads if len(pads) == 2 * spatial else "Conv pads do not match its kernel"
    if mode == "VALID":
        return (0,) * (2 * spatial)
    if any(s != 1 for s in strides):
        return f"Conv auto_pad={mode} with stride > 1 (its padding depends on the input size)"
    total = [d * (k - 1) for k, d in zip(kernel, dilations)]
    small = [t // 2 for t in total]
    large = [t - h for t, h in zip(total, small)]
    return tuple(small + large) if mode == "SAME_UPPER" else tuple(large + small)


@dataclass(frozen=True)
class ConvEmission(Emission):
    """Conv nodes: one (dense), a kxk then a 1x1 (factor pair), or a grouped kxk then a 1x1 (ALDS), in the
    geometry of ``layout.window`` (a ``ConvLayout``)."""

    def _conv(self, fresh, inits, x, y, weight, bias, dtype, k: int, group: int = 1, first: bool = True):
        window = self.layout.window
        spatial = len(window.kernel)
        inputs = [x, self.const(fresh, inits, weight, f"weight{k}", dtype)]
        if bias is not None:
            inputs.append(self.const(fresh, inits, bias, "bias", dtype))
        geometry = ({"strides": list(window.strides), "pads": list(window.pads), "dilations": list(window.dilations)}
                    if first else {})
        return helper.make_node("Conv", inputs, [y], name=fresh(f"{self.prefix}/Conv{k}"),
                                kernel_shape=list(weight.shape[2:]) if first else [1] * spatial,
                                group=group, **geometry)

    def linear(self, fresh, x, y, matrices, bias, dtype):
        kernel = self.layout.window.kernel
        nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        if len(matrices) == 1:
            nodes.append(self._conv(fresh, inits, x, y, convalg.from_matrix(matrices[0], kernel), bias, dtype, 0))
            return nodes, inits
        a, b = matrices
        mid = fresh(f"{self.prefix}.factor_out")
        nodes.append(self._conv(fresh, inits, x, mid, convalg.from_matrix(a, kernel), None, dtype, 0))
        ones = (1,) * len(kernel)
        nodes.append(self._conv(fresh, inits, mid, y, convalg.from_matrix(b, ones), bias, dtype, 1, first=False))
        return nodes, inits

    def grouped(self, fresh, x, y, blocks, second, bias, dtype):
        kernel = self.layout.window.kernel
        groups = blocks.shape[0]
        weight = np.concatenate([convalg.from_matrix(block, kernel) for block in blocks], axis=0)
        mid = fresh(f"{self.prefix}.groups_out")
        inits: list[onnx.TensorProto] = []
        nodes = [self._conv(fresh, inits, x, mid, weight, None, dtype, 0, group=groups)]
        ones = (1,) * len(kernel)
        nodes.append(self._conv(fresh, inits, mid, y, convalg.from_matrix(second, ones), bias, dtype, 1, first=False))
        return nodes, inits


@register_layer
class Conv(LayerKind):
    name = "conv"
    op_types = ("Conv",)

    def match(self, view: GraphView, i: int) -> Layer | str:
        node = view.nodes[i]
        x, weight = node.inputs[0].name, node.inputs[1].name
        if int(attribute(node, "group", 1)) != 1:
            return f"Conv with group={attribute(node, 'group')} (depthwise and grouped convolutions are left alone)"
        if view.is_constant(x):
            return "Conv input is a constant"
        meta = view.constant_meta(weight)
        if meta is None or meta[1] not in FLOAT_TYPES or len(meta[0]) < 3 or 0 in meta[0]:
            return "Conv weight is not a constant, non-empty float tensor"
        shape, dtype = meta
        c_out, c_in, kernel = shape[0], shape[1], tuple(shape[2:])
        spatial = len(kernel)
        strides = tuple(attribute(node, "strides", [1] * spatial))
        dilations = tuple(attribute(node, "dilations", [1] * spatial))
        pads = explicit_pads(node, kernel, strides, dilations)
        if isinstance(pads, str):
            return pads
        bias = node.inputs[2].name if len(node.inputs) > 2 and node.inputs[2].name else None
        if bias is not None:
            b_meta = view.constant_meta(bias)
            if b_meta is None or b_meta[1] != dtype or int(np.prod(b_meta[0], dtype=np.int64)) != c_out:
                return "Conv bias is not a constant of the output channels"
        layout = ConvLayout(input_rank=2 + spatial, positions=view.positions(node.outputs[0].name, 1) or 1,
                            window=Windows(kernel, strides, pads, dilations))
        return Layer(self, (i,), x, node.outputs[0].name, c_in, c_out, dtype, weight, bias,
                     bias_rank=1 if bias else 0, layout=layout)

    def conv_map(self, layer: Layer, view: GraphView) -> convalg.ConvMap:
        """The layer as a float64 ConvMap (reads the weight)."""
        weight = np.asarray(view.constant(layer.weight), dtype=np.float64)
        bias = None if layer.bias is None else np.asarray(view.constant(layer.bias), np.float64).reshape(-1)
        window = layer.layout.window
        return convalg.ConvMap(weight, bias, window.strides, window.pads, window.dilations)

    def affine(self, layer: Layer, view: GraphView) -> Affine:
        conv = self.conv_map(layer, view)
        return Affine(conv.matrix(), conv.bias)

    def emission(self, layer: Layer, prefix: str, opset: int, bias_rank: int, has_bias: bool,
                 n_matrices: int) -> Emission:
        return ConvEmission(prefix, 1, layer.layout)

    def node_macs(self, node, shape_of, per_sample):
        """Output elements x (input channels per group x kernel): the weight's dims past the first."""
        elements = per_sample(node.output[0])
        weight = shape_of(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if elements is None or weight is None or len(weight) < 3 or None in weight:
            return None
        return round(elements * int(np.prod(weight[1:], dtype=np.int64)))

    def fold_maps(self, view: GraphView, segment, prefix: str, opset: int) -> tuple[list[Affine], EmissionFor] | str:
        """The chain as one convolution (convalg.compose), affine links multiplied in per channel."""
        if any(layer.kind is not self for layer in segment.layers):
            return "a chain of convolutions and other layers"
        current = None
        for gap, layer in zip([segment.lead, *segment.links], segment.layers):
            conv = self.conv_map(layer, view)
            before = elementwise(gap)
            if before is not None:
                conv = convalg.scale_input(conv, *before)
                if isinstance(conv, str):
                    return conv
            current = conv if current is None else convalg.compose(current, conv)
            if isinstance(current, str):
                return current
        trailing = elementwise(segment.trail)
        if trailing is not None:
            current = convalg.scale_output(current, *trailing)
        merged = ConvEmission(prefix, 1, ConvLayout(
            input_rank=segment.layers[0].layout.input_rank, positions=segment.layers[-1].layout.positions,
            window=Windows(current.kernel, current.strides, current.pads, current.dilations)))
        return [Affine(current.matrix(), current.bias)], lambda has_bias, n_matrices: merged

