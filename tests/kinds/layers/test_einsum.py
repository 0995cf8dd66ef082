import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_collapse import analyze, optimize
from onnx_collapse.kinds import layer_kind_for
from onnx_collapse.kinds.layers.einsum import Einsum, parse
from tests.builders import analysed, run_model

RNG = np.random.default_rng(0)


def _model(text: str, **weights: np.ndarray) -> onnx.ModelProto:
    """``text`` (onnx.parser syntax) with each named graph input made an initializer holding its array."""
    model = onnx.parser.parse_model(text)
    for name, value in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        kept = [i for i in model.graph.input if i.name != name]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    onnx.checker.check_model(model)
    return model


def _chain(first: str, second: str, x_type: str, w1: tuple, w2: tuple, slope: float = 1.0, bias: bool = False):
    """Einsum(first) [+ bias] -> PRelu(slope) -> Einsum(second) on input ``x_type``."""
    add = "h0 = Add(e0, b0)" if bias else "h0 = Identity(e0)"
    operands = "w1, x" if first.split(",")[0] in ("df", "fd") else "x, w1"  # the weight first
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g ({x_type} x, float{list(w1)} w1, float{list(w2)} w2, float[1] slope{', float[32] b0' if bias else ''})
      => (float y) {{
        e0 = Einsum <equation = "{first}"> ({operands})
        {add}
        a0 = PRelu(h0, slope)
        y = Einsum <equation = "{second}"> (a0, w2)
    }}"""
    weights = {"w1": RNG.standard_normal(w1) / 4, "w2": RNG.standard_normal(w2) / 4,
               "slope": np.array([slope])}
    if bias:
        weights["b0"] = RNG.standard_normal(32)
    return _model(text, **weights)


CASES = [
    ("bsd,df->bsf", "bsf,fo->bso", "float[N, 5, 48]", (48, 32), (32, 16), (3, 5, 48)),
    ("...d,df->...f", "...f,fo->...o", "float[N, 5, 48]", (48, 32), (32, 16), (3, 5, 48)),
    ("ij,jk->ik", "ik,kl->il", "float[N, 48]", (48, 32), (32, 16), (3, 48)),
    ("df,bsd->bsf", "bsf,fo->bso", "float[N, 5, 48]", (48, 32), (32, 16), (3, 5, 48)),
    ("bsd,fd->bsf", "bsf,of->bso", "float[N, 5, 48]", (32, 48), (16, 32), (3, 5, 48)),
]


@pytest.mark.parametrize("first,second,x_type,w1,w2,x_shape", CASES, ids=[c[0] for c in CASES])
def test_einsum_prelu_einsum_folds_to_one_layer_and_matches_in_onnxruntime(first, second, x_type, w1, w2, x_shape):
    model = _chain(first, second, x_type, w1, w2)
    out, report = optimize(model)
    assert [f.status for f in report.folds] == ["folded"], report.folds
    assert report.verification.passed
    assert out.ByteSize() < model.ByteSize()
    assert "Einsum" not in [n.op_type for n in out.graph.node]
    x = RNG.standard_normal(x_shape).astype(np.float32)
    np.testing.assert_allclose(run_model(out, x=x)[0], run_model(model, x=x)[0], rtol=1e-4, atol=1e-4)


def test_einsum_takes_its_bias_add_and_counts_its_macs():
    model = _chain("bsd,df->bsf", "bsf,fo->bso", "float[2, 5, 48]", (48, 32), (32, 16), bias=True)
    view = analysed(model).view
    layer = Einsum().match(view, 0)
    assert len(layer.nodes) == 2 and layer.bias == "b0" and layer.shape == (48, 32)
    assert layer.layout.input_rank == 3 and layer.layout.positions == 5 and layer.macs == 5 * 48 * 32
    out, report = optimize(model)
    assert report.folded and report.verification.passed
    assert report.before.linear_macs == 5 * (48 * 32 + 32 * 16) and not report.before.macs_uncounted
    x = RNG.standard_normal((2, 5, 48)).astype(np.float32)
    np.testing.assert_allclose(run_model(out, x=x)[0], run_model(model, x=x)[0], rtol=1e-4, atol=1e-4)


def test_a_slope_far_from_one_keeps_both_einsums():
    model = _chain("bsd,df->bsf", "bsf,fo->bso", "float[N, 5, 48]", (48, 32), (32, 16), slope=0.2)
    out, report = optimize(model)
    assert not report.folded
    assert [n.op_type for n in out.graph.node].count("Einsum") == 2


REFUSED = [
    ("bsd,df->bfs", "not the input's other axes in order"),  # output axes reordered
    ("bsd,sf->bdf", "last axis is not contracted"),  # contracts another axis
    ("bsd,df", "explicit output"),  # implicit output
    ("bsd,dd->bsd", "repeats"),
    ("bsd,df->bf", "not the input's other axes in order"),  # sums over s too
]


@pytest.mark.parametrize("equation,why", REFUSED, ids=[r[0] for r in REFUSED])
def test_other_equations_are_refused_with_a_reason_in_analyze(equation, why):
    w_shape = [48, 48] if "dd" in equation else ([5, 32] if ",sf" in equation else [48, 32])
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 5, 48] x, float{w_shape} w) => (float y) {{
        y = Einsum <equation = "{equation}"> (x, w)
    }}"""
    model = _model(text, w=RNG.standard_normal(w_shape))
    remarks = analyze(model).remarks
    assert len(remarks) == 1 and "not a linear layer" in remarks[0][1] and why in remarks[0][1], remarks


def test_einsum_of_two_tensors_is_not_a_layer():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 5, 8] q, float[2, 7, 8] k) => (float y) {
        y = Einsum <equation = "bqd,bkd->bqk"> (q, k)
    }"""
    model = _model(text)
    (remark,) = analyze(model).remarks
    assert "no constant weight" in remark[1]
    assert analyze(model).report.before.linear_macs == 5 * 7 * 8  # still counted: output x contracted d


def test_parse_and_registration():
    assert parse("b s d , d f -> b s f") == ([["b", "s", "d"], ["d", "f"]], ["b", "s", "f"])
    assert parse("...d,df->...f") == ([["...", "d"], ["d", "f"]], ["...", "f"])
    assert "malformed" in parse("b1,1f->bf")
    node = onnx.helper.make_node("Einsum", ["x", "w"], ["y"], equation="ij,jk->ik")
    assert isinstance(layer_kind_for(type("N", (), {"op": node.op_type, "domain": ""})()), Einsum)
