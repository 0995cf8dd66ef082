"""Pass: recognise linear layers with the registered layer kinds."""

from __future__ import annotations

from ..kinds import Layer, layer_kind_for
from .context import Context


def find_layers(view) -> tuple[list[Layer], list[tuple[str, str]]]:
    """The layers of one graph, and (node, reason) for each node of a layer op that is not one."""
    layers, remarks = [], []
    for i, node in enumerate(view.nodes):
        kind = layer_kind_for(node)
        if kind is None:
            continue
        found = kind.match(view, i)
        if isinstance(found, Layer):
            layers.append(found)
        else:
            remarks.append((view.label(i), f"not a linear layer: {found}"))
    return layers, remarks


class FindLayers:
    """Fills ``ctx.layers``; lists each layer-op node that is not a foldable layer, with why."""

    name = "layers"

    @staticmethod
    def stage(options, contexts):
        return "finding the linear layers", None, None

    def run(self, ctx: Context) -> None:
        ctx.layers, remarks = find_layers(ctx.view)
        ctx.remarks += remarks
