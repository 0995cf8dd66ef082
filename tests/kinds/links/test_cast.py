"""Cast between layers: the identity when it casts to the dtype the features already have."""

import numpy as np
import onnx

from onnx_collapse import analyze, optimize
from tests.builders import run_model

WIDTHS = (8, 16, 4)


def _model(casts: list[int]) -> onnx.ModelProto:
    """Gemm -> Cast(to=c) for each c in ``casts`` -> PRelu(1) -> Gemm, float32, seeded weights."""
    n_in, hidden, n_out = WIDTHS
    names = [f"c{k}" for k in range(len(casts))]
    reads = ["h", *names]
    lines = [f"{out} = Cast<to={to}>({src})" for src, out, to in zip(reads, names, casts)]
    text = f"""
        <ir_version: 8, opset_import: ["" : 17]>
        chain (float[N, {n_in}] x) => (float[N, {n_out}] y)
        <float[{n_in}, {hidden}] w0, float[{hidden}] b0, float[{hidden}] slope, float[{hidden}, {n_out}] w1,
         float[{n_out}] b1> {{
            h = Gemm(x, w0, b0)
            {" ".join(line + ";" for line in lines)}
            a = PRelu({reads[-1]}, slope)
            y = Gemm(a, w1, b1)
        }}"""
    model = onnx.parser.parse_model(text.replace(";", "\n"))
    rng = np.random.default_rng(0)
    values = {"w0": rng.standard_normal((n_in, hidden)) / np.sqrt(n_in), "b0": rng.standard_normal(hidden) * 0.1,
              "slope": np.ones(hidden), "w1": rng.standard_normal((hidden, n_out)) / np.sqrt(hidden),
              "b1": rng.standard_normal(n_out) * 0.1}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def test_cast_to_the_dtype_the_features_have_folds_into_one_gemm(tmp_path):
    model = _model([onnx.TensorProto.FLOAT])
    out, report = optimize(model, output=tmp_path / "folded.onnx")
    assert [f.status for f in report.folds] == ["folded"], report.unfolded
    assert report.verification is not None and report.verification.passed
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    x = np.random.default_rng(1).standard_normal((5, WIDTHS[0])).astype(np.float32)
    np.testing.assert_allclose(run_model(out, x=x)[0], run_model(model, x=x)[0], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "folded.onnx").stat().st_size < len(model.SerializeToString())


def test_float16_round_trip_is_not_the_identity_and_ends_the_chain():
    model = _model([onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT])
    out, report = optimize(model)
    assert report.folds == [] and len(out.graph.node) == len(model.graph.node)
    reasons = [u.reason for u in analyze(model).report.unfolded]
    assert "next op 'Cast#1' (Cast): Cast from float32 to float16 is not the identity" in reasons, reasons
