"""A model over 2 GB (external data), generated on the fly: optimized, verified, within 1.5x its weight bytes."""

import json
import re
import shutil
import subprocess

import onnx
import pytest
from measure import run_measured
from synthetic import write_mlp_stack

EXE = shutil.which("onnx-collapse")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(EXE is None, reason="console script not installed")]

def test_model_over_2gb_is_folded_verified_and_stays_within_memory(tmp_path):
    weights = 3 * 2 * 128 * 750_000 * 4
    if shutil.disk_usage(tmp_path).free < 3 * weights:
        pytest.skip(f"needs {3 * weights / 2**30:.0f} GiB of free disk for the generated model and its copies")
    src = tmp_path / "big.onnx"
    assert write_mlp_stack(src, d=128, hidden=750_000, blocks=3) == weights > 2**31
    src_bytes = src.read_bytes()
    report_file = tmp_path / "report.json"
    code, peak, _ = run_measured(EXE, "optimize", src, tmp_path / "out.onnx", "--report", report_file)
    assert code == 0
    report = json.loads(report_file.read_text())
    assert [f["status"] for f in report["folds"]] == ["folded"] * 3
    assert report["verification"]["passed"] and all(f["error"]["passed"] for f in report["folds"])
    assert peak <= 1.5 * weights, f"peak RSS {peak / 2**30:.2f} GiB for {weights / 2**30:.2f} GiB of weights"
    assert src.read_bytes() == src_bytes
    # weights went to the output's own data file; nothing refers to the input's
    written = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    locations = {e.value for t in written.graph.initializer for e in t.external_data if e.key == "location"}
    assert len(locations) == 1 and re.fullmatch(r"out\.onnx\.[0-9a-f]{12}\.data", locations.pop())
    assert report["after"]["file_bytes"] < report["before"]["file_bytes"] / 1000
    # an independent check by the verify command
    verify = subprocess.run([EXE, "verify", src, tmp_path / "out.onnx"], capture_output=True, text=True, timeout=1200)
    assert verify.returncode == 0, verify.stdout + verify.stderr
