"""The kind registry: each default-domain op gets the kind registered for it; other domains' ops get none."""

import onnx_graphsurgeon as gs
import pytest

from onnx_collapse.kinds import layer_kind_for, link_kind_for


@pytest.mark.parametrize("op", ["Gemm", "MatMul", "Conv"])
@pytest.mark.parametrize("domain", [None, "", "ai.onnx"])
def test_linear_ops_of_the_default_domain_are_layers(op, domain):
    kind = layer_kind_for(gs.Node(op=op, domain=domain))
    assert kind is not None and op in kind.op_types
    assert link_kind_for(gs.Node(op=op, domain=domain)) is None


@pytest.mark.parametrize("op", ["Gemm", "MatMul", "Conv", "PRelu", "Add"])
def test_a_custom_domains_op_of_the_same_name_is_no_kind(op):
    node = gs.Node(op=op, domain="com.example")
    assert layer_kind_for(node) is None and link_kind_for(node) is None


@pytest.mark.parametrize("op,is_link", [("PRelu", True), ("Add", True), ("Relu", False), ("Softmax", False)])
def test_links_are_the_ops_a_link_kind_handles(op, is_link):
    assert layer_kind_for(gs.Node(op=op)) is None
    kind = link_kind_for(gs.Node(op=op))
    assert (kind is not None and op in kind.op_types) is is_link
