"""Link kind: shape ops that keep the feature (last) axis as it is: ``Reshape``, ``Flatten``, ``Squeeze``,
``Unsqueeze`` (onnxsim's ``Reshape -> Gemm -> Reshape`` sandwich, TorchScript's ``Flatten`` on 2-D
features). They only regroup the rows; the fold checks that the rows come out as they went in."""

from __future__ import annotations

from ...graph import GraphView, attribute
from ..base import FeatureMap, LinkKind, Regroup, Site, register_link


def _axes(view: GraphView, node) -> list[int] | None:
    """Squeeze/Unsqueeze axes from the attribute (before opset 13) or the constant second input."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = view.constant(node.inputs[1].name)
        return None if value is None or value.dtype.kind not in "iu" else [int(a) for a in value.reshape(-1)]
    return None


def reshape_target(view: GraphView, node, site: Site) -> tuple[int | None, ...] | str:
    """The shape after ``Reshape`` if it keeps the last axis (dims None where not known), else why not."""
    target = view.constant(node.inputs[1].name)
    if target is None or target.dtype.kind not in "iu" or target.ndim != 1 or not target.size:
        return "Reshape to a shape that is not a constant"
    dims = [int(d) for d in target]
    copies = not attribute(node, "allowzero", 0)
    if dims[-1] == 0 and copies and site.rank == len(dims):
        dims[-1] = site.width
    if dims[-1] != site.width:
        return f"Reshape to {dims} changes the feature axis of width {site.width}"
    known = site.shape or ()
    out = [known[k] if d == 0 and copies and k < len(known) else (d if d > 0 else None) for k, d in enumerate(dims)]
    return tuple(out)


@register_link
class ShapeOp(LinkKind):
    name = "reshape"
    op_types = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")

    def match(self, view: GraphView, i: int, site: Site) -> FeatureMap | str:
        node = view.nodes[i]
        if site.axis != -1:
            return f"{node.op} of channel-first features"
        if node.inputs[0].name != site.data:
            return f"{node.op} reads the features as its shape"
        if node.op == "Reshape":
            out = reshape_target(view, node, site)
            return out if isinstance(out, str) else Regroup(out)
        if site.rank is None:
            return f"{node.op} on features of unknown rank"
        rank = site.rank
        if node.op == "Flatten":
            axis = int(attribute(node, "axis", 1)) % max(rank, 1)
            if axis != rank - 1:
                return f"Flatten(axis={axis}) merges the feature axis with others"
            return Regroup((None, site.width))
        axes = _axes(view, node)
        if axes is None:
            return f"{node.op} axes are not constants"
        out_rank = rank - len(axes) if node.op == "Squeeze" else rank + len(axes)
        axes_rank = out_rank if node.op == "Unsqueeze" else rank  # Unsqueeze's axes index its output
        if out_rank < 1 or any(a % axes_rank == axes_rank - 1 for a in axes):
            return f"{node.op} on the feature axis"
        return Regroup(tuple([None] * (out_rank - 1) + [site.width]))
