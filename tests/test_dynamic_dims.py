"""Dims written as negative values (PaddlePaddle's exporter writes -1) are dynamic, not fixed."""

import numpy as np

from onnx_collapse import optimize, verify
from tests.builders import mlp


def _minus_one_batch():
    model = mlp()
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = -1
    return model


def test_a_negative_dim_takes_the_default_or_the_given_size():
    out, report = optimize(_minus_one_batch())
    assert report.verification.passed and "x[0]" in report.verification.inputs
    _, report = optimize(_minus_one_batch(), input_shapes={"x": (5, 8)})
    assert report.verification.passed


def test_verify_accepts_a_shape_for_a_negative_dim():
    model = _minus_one_batch()
    result = verify(model, model, input_shapes={"x": (3, 8)})
    assert result.passed and np.isfinite(result.outputs[0].max_abs)
