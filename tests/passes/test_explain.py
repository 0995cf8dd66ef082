"""Every layer that ends up in no fold is listed with why, naming the op that ended its chain."""

import json
import shutil
import subprocess

import onnx
from builders import mlp

from onnx_collapse import analyze, optimize


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


def test_cli_prints_and_reports_the_reasons(tmp_path):
    path = tmp_path / "relu.onnx"
    onnx.save(_with_relu(), str(path))
    exe = shutil.which("onnx-collapse")
    text = subprocess.run([exe, "analyze", str(path)], capture_output=True, text=True, timeout=120).stdout
    assert "layers not folded" in text and "next op 'relu0' (Relu) is not an op a fold can pass through" in text
    payload = json.loads(subprocess.run([exe, "analyze", str(path), "--json"], capture_output=True, text=True,
                                        timeout=120).stdout)
    assert {"layer": "fc0", "reason": "next op 'relu0' (Relu) is not an op a fold can pass through"} in payload["unfolded"]
