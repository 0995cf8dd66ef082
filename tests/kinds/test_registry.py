import itertools
from types import SimpleNamespace

import pytest

from onnx_collapse.kinds import LAYER_KINDS, LINK_KINDS, layer_kind_for, link_kind_for
from onnx_collapse.kinds.base import Registry


def _node(op: str, domain: str = ""):
    return SimpleNamespace(op=op, domain=domain)


@pytest.mark.parametrize("registry", [LAYER_KINDS, LINK_KINDS], ids=["layers", "links"])
def test_registering_the_shipped_kinds_in_any_order_gives_the_same_kind_for_every_op(registry):
    kinds = list(registry)
    ops = {op for kind in kinds for op in kind.op_types}
    expected = {op: registry.for_node(_node(op)) for op in ops}
    for order in itertools.islice(itertools.permutations(kinds), 48):
        permuted = Registry("test")
        for kind in order:
            permuted.add(kind)
        assert {op: permuted.for_node(_node(op)) for op in ops} == expected


def test_two_kinds_claiming_one_op_are_refused_whichever_comes_first():
    first = SimpleNamespace(name="first", op_types=("MatMul", "Foo"))
    second = SimpleNamespace(name="second", op_types=("Bar", "Foo"))
    for a, b in [(first, second), (second, first)]:
        registry = Registry("layer")
        registry.add(a)
        with pytest.raises(ValueError, match="'Foo'"):
            registry.add(b)
        assert list(registry) == [a] and registry.for_node(_node("Bar")) is (a if a is second else None)


def test_only_the_default_domain_is_recognised():
    assert layer_kind_for(_node("MatMul")) is not None and layer_kind_for(_node("MatMul", "ai.onnx")) is not None
    assert layer_kind_for(_node("MatMul", "com.microsoft")) is None
    assert link_kind_for(_node("PRelu")) is not None and link_kind_for(_node("MatMul")) is None


def test_every_shipped_op_has_one_kind():
    for registry in (LAYER_KINDS, LINK_KINDS):
        ops = [op for kind in registry for op in kind.op_types]
        assert len(ops) == len(set(ops)) and set(registry.ops) == set(ops)
