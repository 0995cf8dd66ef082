import numpy as np
import pytest

from onnx_collapse import linalg
from onnx_collapse.linalg import Affine


def test_compose_equals_sequential_application():
    rng = np.random.default_rng(1)
    layers = [Affine(rng.standard_normal((5, 7)), rng.standard_normal(7)),
              Affine(rng.standard_normal((7, 3)), None),
              Affine(rng.standard_normal((3, 4)), rng.standard_normal(4))]
    x = rng.standard_normal((6, 5))
    y = x
    for layer in layers:
        y = y @ layer.weight + (0 if layer.bias is None else layer.bias)
    folded = linalg.compose(layers)
    np.testing.assert_allclose(x @ folded.weight + folded.bias, y, rtol=1e-12, atol=1e-12)


def test_compose_without_any_bias_has_no_bias():
    rng = np.random.default_rng(2)
    assert linalg.compose([Affine(rng.standard_normal((2, 3))), Affine(rng.standard_normal((3, 2)))]).bias is None


def test_numerical_rank_of_product_is_the_bottleneck():
    rng = np.random.default_rng(3)
    product = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 50))
    _, s, _ = linalg.svd(product)
    assert linalg.numerical_rank(s, product.shape) == 6


def test_factor_pair_at_numerical_rank_is_exact():
    rng = np.random.default_rng(4)
    product = rng.standard_normal((30, 5)) @ rng.standard_normal((5, 20))
    u, s, vt = linalg.svd(product)
    a, b = linalg.factor_pair(u, s, vt, linalg.numerical_rank(s, product.shape))
    assert a.shape == (30, 5) and b.shape == (5, 20)
    np.testing.assert_allclose(a @ b, product, atol=1e-10)


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (4, 4), (64, 10), (256, 256), (3, 1000)])
def test_max_factor_rank_is_the_largest_strictly_smaller_rank(n_in, n_out):
    r = linalg.max_factor_rank(n_in, n_out)
    assert linalg.factor_params(n_in, n_out, r, False) < n_in * n_out or r == 0
    assert linalg.factor_params(n_in, n_out, r + 1, False) >= n_in * n_out


def test_error_curves_start_at_one_and_end_at_zero():
    s = np.array([4.0, 2.0, 1.0])
    np.testing.assert_allclose(linalg.spectral_errors(s), [1.0, 0.5, 0.25, 0.0])
    fro = linalg.frobenius_errors(s)
    assert fro[0] == pytest.approx(1.0) and fro[-1] == 0.0
    assert fro[1] == pytest.approx(np.sqrt(5 / 21))
