"""What the passes of one graph share: fresh names that collide with nothing in the model, subgraphs included."""

import onnx

from onnx_collapse.options import Options
from onnx_collapse.passes.context import Context, all_names

# "t" in the main graph, "t_1" only inside the If's then-branch, "t_3" only as a node name
MODEL = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y) {
        t = Relu(x)
        y = If (c) <
            then_branch = then_g () => (float[2] t_1) { t_1 = Neg(t) },
            else_branch = else_g () => (float[2] e) { e = Identity(t) }
        >
    }
''')
MODEL.graph.node[0].name = "t_3"


def test_every_name_counts_subgraph_tensors_and_node_names():
    names = all_names(MODEL.graph)
    assert {"x", "c", "y", "t", "t_1", "t_3", "e"} <= names


def test_fresh_names_skip_the_names_in_subgraphs_and_each_other():
    ctx = Context(MODEL, None, Options(), 17)
    assert [ctx.fresh_name("t") for _ in range(3)] == ["t_2", "t_4", "t_5"]
    assert ctx.fresh_name("new") == "new"
