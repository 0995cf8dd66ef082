"""Property: over random chains, the optimized model matches the original and is never larger."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnx_collapse import optimize
from tests.builders import ActSpec, ChainSpec, LayerSpec, build


@st.composite
def chains(draw):
    input_rank = draw(st.sampled_from([2, 3]))
    n_layers = draw(st.integers(2, 4))
    dims = [draw(st.integers(1, 24)) for _ in range(n_layers + 1)]
    layers = []
    for k in range(n_layers):
        op = "gemm" if input_rank == 2 and draw(st.booleans()) else "matmul"
        bias_choices = [None, "vector", "row", "scalar", "one"] + (["rank3"] if input_rank == 3 else [])
        layers.append(LayerSpec(
            dims[k + 1], op=op, trans_b=draw(st.booleans()),
            alpha=draw(st.sampled_from([1.0, 0.5, 2.0])) if op == "gemm" else 1.0,
            beta=draw(st.sampled_from([1.0, 0.25])) if op == "gemm" else 1.0,
            bias=draw(st.sampled_from(bias_choices)) if op == "matmul" else draw(st.sampled_from(bias_choices[:5])),
            bias_first=draw(st.booleans()),
        ))
    acts = []
    for _ in range(n_layers - 1):
        kind = draw(st.sampled_from(["prelu", "leaky", "none"]))
        slope = draw(st.sampled_from([1.0, 1.0, 0.999, 1.02, 0.97, 0.5]))
        acts.append(ActSpec(kind=kind, slope=slope, shape=draw(st.sampled_from(["channel", "row", "scalar"])),
                            jitter=draw(st.sampled_from([0.0, 0.0, 1e-3])), dropout=draw(st.booleans())))
    return ChainSpec(dims[0], layers, acts, input_rank=input_rank)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=chains(), seed=st.integers(0, 2**16))
def test_optimized_chain_matches_and_never_grows(spec, seed):
    model = build(spec, seed)
    out, report = optimize(model)
    assert report.verification.passed
    assert report.after.params <= report.before.params
    assert report.after.linear_macs <= report.before.linear_macs
    for record in report.folds:
        if record.status == "folded":
            assert record.params_after < record.params_before and record.macs_after <= record.macs_before
            assert record.error is not None
    # an independent run at another batch size agrees within the verified tolerance
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([5] + [3] * (spec.input_rank - 2) + [spec.n_in]).astype(np.float32)
    a = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    b = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})[0]
    assert a.shape == b.shape
    tol = report.verification.outputs[0] if report.verification.outputs else None
    atol, rtol = (tol.atol, tol.rtol) if tol else (0, 0)
    # other inputs than the verifier's may land a little further from the reference: allow 10x
    np.testing.assert_allclose(b, a, atol=10 * atol + 1e-6, rtol=10 * rtol + 1e-6)


def test_slope_exactly_one_folds_every_layer():
    spec = ChainSpec(6, [LayerSpec(12), LayerSpec(12, op="gemm"), LayerSpec(3)], [ActSpec(), ActSpec(kind="leaky")])
    out, report = optimize(build(spec))
    assert [r.status for r in report.folds] == ["folded"]
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
