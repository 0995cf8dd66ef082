import numpy as np

from onnx_collapse import linalg, optimize
from onnx_collapse.passes.fold import cheapest_form
from tests.builders import ActSpec, ChainSpec, LayerSpec, build, mlp


def test_wide_chain_folds_dense_without_svd(monkeypatch):
    def refuse(*_):
        raise AssertionError("svd called")

    monkeypatch.setattr(np.linalg, "svd", refuse)
    rng = np.random.default_rng(0)
    layers = [linalg.Affine(rng.standard_normal((8, 16))), linalg.Affine(rng.standard_normal((16, 4)))]
    assert cheapest_form(layers)[0].name == "dense"


def test_bottleneck_chain_becomes_exact_factor_pair_without_forming_the_product(monkeypatch):
    rng = np.random.default_rng(0)
    layers = [linalg.Affine(rng.standard_normal((64, 4)), rng.standard_normal(4)),
              linalg.Affine(rng.standard_normal((4, 4))),
              linalg.Affine(rng.standard_normal((4, 64)), rng.standard_normal(64))]
    expected = linalg.compose(layers)
    real_matmul_shapes = []
    monkeypatch.setattr(linalg.Factored, "dense", lambda self: real_matmul_shapes.append(1))
    form, exact = cheapest_form(layers)
    assert form.name == "factor" and form.rank == 4 and not real_matmul_shapes
    np.testing.assert_allclose(form.matrices[0] @ form.matrices[1], expected.weight, atol=1e-10)
    np.testing.assert_allclose(exact.bias, expected.bias, atol=1e-12)


def test_plain_two_layer_bottleneck_is_left_alone_because_nothing_is_smaller():
    model = build(ChainSpec(64, [LayerSpec(4, bias=None), LayerSpec(64, bias=None)], [ActSpec(kind="none")]))
    out, report = optimize(model)
    (record,) = report.folds
    assert record.status == "skipped" and "no smaller form" in record.reason
    assert out.graph.node[0].op_type == "Gemm" and len(out.graph.node) == 2


def test_fold_never_grows_the_model():
    out, report = optimize(mlp(n_in=32, hidden=4, n_out=32))
    assert report.after.params <= report.before.params
    assert report.after.linear_macs <= report.before.linear_macs


def test_shared_initializer_is_not_modified_and_kept_for_its_other_reader():
    model = mlp()
    # a second graph output reads the first weight too
    model.graph.node.append(__import__("onnx").helper.make_node("Identity", ["w0"], ["w0_copy"]))
    model.graph.output.append(__import__("onnx").helper.make_tensor_value_info("w0_copy", 1, None))
    before = {t.name: t.SerializeToString() for t in model.graph.initializer}
    out, report = optimize(model)
    assert report.folded
    kept = {t.name: t.SerializeToString() for t in out.graph.initializer}
    assert kept["w0"] == before["w0"]


def test_float16_fold_is_computed_in_float64_and_verified():
    model = build(ChainSpec(16, [LayerSpec(32), LayerSpec(8)], [ActSpec()], dtype=np.float16))
    out, report = optimize(model)
    assert report.folded and report.verification.passed
    assert out.graph.initializer[-1].data_type == model.graph.initializer[0].data_type
