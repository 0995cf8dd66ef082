import numpy as np
import onnx

from onnx_collapse import optimize
from tests.builders import mlp, run_model


def _with_batchnorm(**attrs) -> onnx.ModelProto:
    """mlp() as Linear - BatchNorm1d - PReLU(1) - Linear (TorchScript keeps the BatchNormalization)."""
    model, rng = mlp(), np.random.default_rng(5)
    stats = {"gamma": rng.uniform(0.5, 2, 16), "beta": rng.standard_normal(16), "mean": rng.standard_normal(16),
             "var": rng.uniform(0.1, 3, 16)}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in stats.items())
    model.graph.node.insert(1, onnx.helper.make_node("BatchNormalization", ["l0", *stats], ["l0_bn"], name="bn",
                                                     epsilon=1e-3, **attrs))
    next(n for n in model.graph.node if n.op_type == "PRelu").input[0] = "l0_bn"
    onnx.checker.check_model(model)
    return model


def test_batchnorm_between_layers_folds_exactly():
    model = _with_batchnorm()
    out, report = optimize(model)
    assert [f.status for f in report.folds] == ["folded"] and report.verification.passed
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    assert report.folds[0].params_before == 8 * 16 + 16 + 16 + 4 * 16 + 16 * 4 + 4  # BN statistics counted
    x = np.random.default_rng(6).standard_normal((9, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(out, x=x)[0], run_model(model, x=x)[0], rtol=1e-4, atol=1e-5)


def test_batchnorm_with_statistics_fed_at_run_time_is_not_a_link():
    model = _with_batchnorm()
    model.graph.input.append(onnx.helper.make_tensor_value_info("mean", onnx.TensorProto.FLOAT, [16]))
    _, report = optimize(model, verify=False)  # "mean" is an overridable initializer now
    assert not report.folded
