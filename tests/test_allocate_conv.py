"""ALDS for convolutions: channel groups, costs equal to what the emitted Conv nodes store, brute force."""

import itertools

import numpy as np
import pytest
from onnx import numpy_helper

from onnx_collapse import allocate
from onnx_collapse.kinds.layers.conv import ConvEmission
from onnx_collapse.layout import ConvLayout, Windows


def _conv_matrix(seed, c_in, c_out, kernel=(3, 3)):
    """A (C_in * kh * kw, C_out) weight matrix with a decaying spectrum, as trained convolutions have."""
    rng = np.random.default_rng(seed)
    rows = c_in * int(np.prod(kernel))
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((c_out, c_out)))
    s = np.exp(-rng.uniform(0.1, 0.6) * np.arange(min(rows, c_out)))
    return (u[:, : s.size] * s) @ v[: s.size]


def test_groups_split_whole_input_channels():
    spectrum = allocate.spectrum("conv", _conv_matrix(0, 6, 8), max_groups=6, unit=9)
    assert sorted({o.groups for o in spectrum.options}) == [1, 2, 3, 6]  # divisors of C_in = 6, not of 54


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_option_costs_are_what_the_emitted_convolutions_store(groups):
    c_in, c_out, kernel = 6, 8, (3, 3)
    w = _conv_matrix(1, c_in, c_out, kernel)
    spectrum = allocate.spectrum("conv", w, max_groups=3, unit=9)
    names = iter(range(1000))
    emission = ConvEmission("p", 1, ConvLayout(4, window=Windows(kernel, (1, 1), (1, 1, 1, 1), (1, 1))))
    for option in (o for o in spectrum.options if o.groups == groups and o.rank is not None):
        j = option.rank
        if groups == 1:
            _, inits = emission.linear(lambda b: f"{b}_{next(names)}", "x", "y",
                                       [np.ones((c_in * 9, j)), np.ones((j, c_out))], None, np.float32)
        else:
            _, inits = emission.grouped(lambda b: f"{b}_{next(names)}", "x", "y",
                                        np.ones((groups, c_in // groups * 9, j)), np.ones((groups * j, c_out)),
                                        None, np.float32)
        assert sum(numpy_helper.to_array(t).size for t in inits) == option.params


@pytest.mark.parametrize("budget", [0.3, 0.45, 0.6, 0.8])
def test_conv_allocation_with_groups_matches_brute_force(budget):
    layers = [allocate.spectrum(f"c{k}", _conv_matrix(k, c_in, c_out), max_groups=2, unit=9)
              for k, (c_in, c_out) in enumerate([(2, 4), (4, 4), (4, 3)])]
    chosen = allocate.allocate_budget(layers, budget)
    limit = budget * sum(layer.dense.params for layer in layers)
    best = min((max(o.error for o in combo) for combo in itertools.product(*(layer.options for layer in layers))
                if sum(o.params for o in combo) <= limit), default=None)
    if best is None:  # infeasible: the cheapest option everywhere
        assert chosen == [min(layer.options, key=lambda o: o.params) for layer in layers]
        return
    assert allocate.total_cost(chosen) <= limit
    assert max(o.error for o in chosen) == pytest.approx(best)
