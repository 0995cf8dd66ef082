"""Every layer that ends up in no fold is listed with why, naming the op that ended its chain."""

import json
import shutil
import subprocess

import onnx
import pytest

from onnx_collapse import analyze, optimize
from onnx_collapse.passes.explain import verdict
from tests.builders import mlp
from tests.common import MODELS


def _with_relu():
    model = mlp()
    prelu = next(n for n in model.graph.node if n.op_type == "PRelu")
    prelu.op_type, prelu.name = "Relu", "relu0"
    del prelu.input[1:]
    return model


def test_layers_without_a_fold_name_the_op_that_ended_their_chain():
    found = analyze(_with_relu())
    reasons = {u.layer: u.reason for u in found.report.unfolded}
    assert reasons == {"fc0": "next op 'relu0' (Relu) is not an op a fold can pass through", "fc1": "its output 'l1' is a model output (no layer follows)"}


def test_a_skipped_chain_gives_its_own_reason_to_its_layers():
    _, report = optimize(mlp(slope=0.5))
    assert {u.layer for u in report.unfolded} == {"fc0", "fc1"}
    assert all("slope 0.5 is not within 0.05 of 1" in u.reason for u in report.unfolded)


def test_folded_layers_are_not_listed():
    _, report = optimize(mlp())
    assert report.unfolded == []


@pytest.mark.slow
def test_cli_prints_and_reports_the_reasons(tmp_path):
    path = tmp_path / "relu.onnx"
    onnx.save(_with_relu(), str(path))
    exe = shutil.which("onnx-collapse")
    text = subprocess.run([exe, "analyze", str(path)], capture_output=True, text=True, timeout=120).stdout
    assert "layers not folded" in text and "next op 'relu0' (Relu) is not an op a fold can pass through" in text
    payload = json.loads(subprocess.run([exe, "analyze", str(path), "--json"], capture_output=True, text=True,
                                        timeout=120).stdout)
    assert {"layer": "fc0", "reason": "next op 'relu0' (Relu) is not an op a fold can pass through",
            "ended_by": "Relu"} in payload["unfolded"]
    assert payload["verdict"][0].startswith("could fold after LayerCollapse training: 1 layer (fc0) followed by Relu")


def _verdict(model, **options) -> list[str]:
    return verdict(analyze(model, **options).report, options.get("slope_tol", 0.05))


def test_the_verdict_of_a_plain_relu_mlp_points_to_layercollapse_training_and_truncation():
    said = _verdict(_with_relu())
    assert [s.split(":")[0] for s in said] == ["could fold after LayerCollapse training", "truncation could shrink the 2 linear or convolutional layers, at some accuracy"]
    assert "onnx_collapse.torch" in said[0] and "make_collapsible" in said[0]
    assert "--low-rank all --rank-budget 0.5 --calibrate calib.npz" in said[1]
    assert not any("link kind" in s or "graph output" in s for s in said)


def test_the_verdict_of_trained_and_conv_bn_models():
    near = _verdict(MODELS / "leaky_099.onnx")
    assert near[0].startswith("folds approximately: 1 chain with slopes near 1 (0.99)") and "--calibrate" in near[0]
    assert near[1] == "predicted: parameters 7,210 -> 650, MACs per sample 7,104 -> 640."
    exact = _verdict(MODELS / "cnn_bn_dynamo.onnx")
    assert exact[0].startswith("folds as it is: 1 chain (1 > 3)") and "BatchNorm" in exact[0]
    far = _verdict(MODELS / "no_fold_slope_05.onnx")
    assert far[0].startswith("could fold after LayerCollapse training: 1 chain with slopes too far from 1")


def test_nothing_applies_says_so_and_why():
    said = _verdict(onnx.parser.parse_model(f"""
        <ir_version: {onnx.IR_VERSION}, opset_import: ["" : 17]> g (float[2, 2] x) => (float[2, 2] y) {{ y = Relu (x) }}"""))
    assert said == ["nothing applies: onnx-collapse found no fully connected (Gemm, MatMul with a constant weight) "
                    "or convolutional layer it can fold or truncate; the model would come back unchanged."]
