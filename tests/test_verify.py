"""The public verify(): two models on the same inputs, every output compared, bad keywords named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_collapse import CollapseError, optimize, verify
from tests.common import MODELS


def test_a_model_and_its_optimized_form_agree(tmp_path):
    out = tmp_path / "out.onnx"
    optimize(str(MODELS / "three_layer.onnx"), output=str(out))
    result = verify(str(MODELS / "three_layer.onnx"), str(out), check_n=2)
    assert result.passed and result.n_input_sets == 2 and result.outputs[0].max_abs < 1e-4


def test_a_different_model_fails_with_its_error_measured(tmp_path):
    model = onnx.load(str(MODELS / "three_layer.onnx"))
    weight = model.graph.initializer[0]
    values = onnx.numpy_helper.to_array(weight) * 1.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
    result = verify(str(MODELS / "three_layer.onnx"), model)
    assert not result.passed and result.outputs[0].required_atol > result.outputs[0].atol


def test_a_bad_keyword_is_named_as_the_api_spells_it():
    with pytest.raises(CollapseError, match="check_n"):
        verify(str(MODELS / "three_layer.onnx"), str(MODELS / "three_layer.onnx"), check_n=0)
