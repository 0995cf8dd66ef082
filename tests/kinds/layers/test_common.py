"""The checks shared by fully connected layer kinds: which weights are float matrices, which biases broadcast."""

import numpy as np
import pytest

from onnx_collapse.kinds.layers.common import bias_fits, float_matrix


@pytest.mark.parametrize("shape,fits", [((), True), ((1,), True), ((4,), True), ((1, 4), True), ((1, 1, 4), True),
                                        ((1, 1), True), ((3,), False), ((2, 4), False), ((4, 1), False)])
def test_a_bias_fits_when_it_broadcasts_over_the_output_features(shape, fits):
    assert bias_fits(shape, 4) is fits


@pytest.mark.parametrize("meta,ok", [(((8, 4), np.dtype(np.float32)), True), (((8, 4), np.dtype(np.float16)), True),
                                     (((8, 4), np.dtype(np.float64)), True), (((8, 4), np.dtype(np.int64)), False),
                                     (((8, 4), None), False), (((8, 0), np.dtype(np.float32)), False),
                                     (((2, 8, 4), np.dtype(np.float32)), False), (None, False)])
def test_only_a_non_empty_2d_float_constant_is_a_weight_matrix(meta, ok):
    assert float_matrix(meta) is ok
