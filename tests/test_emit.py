"""Weights as the emitted nodes store them."""

import numpy as np

from onnx_collapse.emit import cast_checked


def test_emitted_weights_hold_no_subnormals():
    """Subnormal floats slow CPU kernels by orders of magnitude; folded weights flush them to zero."""
    value = np.array([1.0, 1e-40, -3e-42, 0.0, 2.0**-126])
    out = cast_checked(value, np.float32)
    assert out.tolist() == [1.0, 0.0, 0.0, 0.0, np.float32(2.0**-126)]
    assert value[1] == 1e-40  # the float64 input is not modified
