"""The JSON reports are a contract: real output of optimize, analyze and verify validates against the shipped
schema, which requires schema_version and describes every field (no undeclared field passes)."""

import copy
import json
import subprocess
import sys
from importlib import resources

import jsonschema
import numpy as np
import onnx
import pytest

from onnx_collapse.report import SCHEMA_VERSION
from tests.common import MODELS
from tests.test_prune import _rows, pair_model


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((resources.files("onnx_collapse") / "schemas" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def command(*args, codes=(0,)) -> dict:
    result = subprocess.run([sys.executable, "-m", "onnx_collapse", *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode in codes, result.stderr
    return json.loads(result.stdout)


def assert_valid(validator, report: dict) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(report)]
    assert not errors, errors[:5]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    """One real report per kind of output, covering every optional part (null and filled)."""
    tmp = tmp_path_factory.mktemp("reports")
    np.savez(tmp / "val.npz", x=np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32))
    np.savez(tmp / "labels.npz", y=np.arange(16) % 4)
    # a MatMul whose weight is an input is not a linear layer: analyze remarks on it
    onnx.save(onnx.parser.parse_model(f"""
        <ir_version: {onnx.IR_VERSION}, opset_import: ["" : 17]>
        g (float[2, 2] x, float[2, 2] w) => (float[2, 2] y) {{ [mm] y = MatMul (x, w) }}"""), tmp / "remark.onnx")
    onnx.save(pair_model(second=True), tmp / "pairs.onnx")
    np.savez(tmp / "calib.npz", **_rows(96, 1))
    np.savez(tmp / "held.npz", **_rows(32, 2))
    out = {
        "optimize": command("optimize", MODELS / "three_layer.onnx", tmp / "a.onnx", "--json",
                            "--report", tmp / "a.json"),
        "optimize, not verified": command("optimize", MODELS / "mlp_prelu_channel.onnx", tmp / "b.onnx",
                                          "--no-verify", "--json"),
        "optimize, nothing to fold": command("optimize", MODELS / "no_fold_slope_05.onnx", tmp / "f.onnx", "--json"),
        "optimize, truncated": command("optimize", MODELS / "transformer_mlp_3d.onnx", tmp / "c.onnx", "--rank-budget",
                                       "0.3", "--low-rank", "all", "--max-groups", "2", "--atol", "100",
                                       "--rtol", "100", "--json"),
        "optimize, reverted": command("optimize", MODELS / "leaky_099.onnx", tmp / "d.onnx", "--json"),
        "optimize, budget not met": command("optimize", MODELS / "three_layer.onnx", tmp / "g.onnx", "--low-rank",
                                            "all", "--rank-budget", "0.5", "--json"),
        "optimize, top1": command("optimize", MODELS / "mlp_prelu_channel.onnx", tmp / "e.onnx", "--inputs",
                                  tmp / "val.npz", "--metric", "top1", "--json"),
        "optimize, pruned": command("optimize", tmp / "pairs.onnx", tmp / "p.onnx", "--calibrate", tmp / "calib.npz",
                                    "--inputs", tmp / "held.npz", "--atol", "0.05", "--rtol", "0", "--prune-share",
                                    "auto", "--rank-budget", "auto", "--low-rank", "all", "--json"),
        "prune": command("prune", tmp / "pairs.onnx", tmp / "q.onnx", "--calibrate", tmp / "calib.npz", "--inputs",
                         tmp / "held.npz", "--atol", "0.05", "--rtol", "0", "--share", "0.04", "--json",
                         "--report", tmp / "q.json"),
        "prune, auto": command("prune", tmp / "pairs.onnx", tmp / "r.onnx", "--calibrate", tmp / "calib.npz",
                               "--inputs", tmp / "held.npz", "--atol", "0.05", "--rtol", "0", "--share", "auto",
                               "--json"),
        "prune, failed": command("prune", tmp / "pairs.onnx", tmp / "s.onnx", "--calibrate", tmp / "calib.npz",
                                 "--inputs", tmp / "held.npz", "--atol", "1e-9", "--rtol", "0", "--share", "0.5",
                                 "--json", codes=(1,)),
        "prune, not verified": command("prune", tmp / "pairs.onnx", tmp / "t.onnx", "--calibrate", tmp / "calib.npz",
                                       "--no-verify", "--json"),
        "analyze": command("analyze", MODELS / "no_fold_shared.onnx", "--json"),
        "analyze, remarks": command("analyze", tmp / "remark.onnx", "--json"),
        "analyze, spectrum": command("analyze", MODELS / "bottleneck.onnx", "--spectrum", "--low-rank", "all",
                                     "--json"),
        "verify": command("verify", MODELS / "three_layer.onnx", tmp / "a.onnx", "--json"),
        "verify, confidence": command("verify", MODELS / "mlp_prelu_channel.onnx", tmp / "e.onnx", "--inputs",
                                      tmp / "val.npz", "--metric", "top1", "--confidence", "0.9",
                                      "--min-agreement", "0.9", "--json"),  # 16 of 16 rows: bound 90.7 %
        "verify, labels": command("verify", MODELS / "mlp_prelu_channel.onnx", tmp / "e.onnx", "--inputs",
                                  tmp / "val.npz", "--metric", "top1", "--labels", tmp / "labels.npz", "--max-drop",
                                  "0.01", "--confidence", "0.9", "--json", codes=(0, 1)),
        "verify, failed": command("verify", MODELS / "leaky_1.onnx", MODELS / "leaky_099.onnx", "--json",
                                  codes=(1,)),
    }
    out["optimize --report FILE"] = json.loads((tmp / "a.json").read_text())
    out["prune --report FILE"] = json.loads((tmp / "q.json").read_text())
    return out


KINDS = ["optimize", "optimize --report FILE", "optimize, not verified", "optimize, nothing to fold",
         "optimize, truncated",
         "optimize, reverted", "optimize, budget not met", "optimize, top1", "optimize, pruned", "prune",
         "prune --report FILE", "prune, auto", "prune, failed", "prune, not verified", "analyze", "analyze, remarks",
         "analyze, spectrum", "verify",
         "verify, confidence", "verify, labels", "verify, failed"]


@pytest.mark.parametrize("kind", KINDS)
def test_real_reports_validate_and_carry_the_version(validator, reports, kind):
    report = reports[kind]
    assert report["schema_version"] == SCHEMA_VERSION
    assert_valid(validator, report)


def test_the_reports_cover_the_optional_parts(reports):
    """Guards the test above: null and filled forms of every optional field were really validated."""
    folds = [f for r in reports.values() for f in r.get("folds", [])]
    assert {f["status"] for f in folds} >= {"folded", "reverted", "skipped", "foldable"}
    assert {f["form"] for f in folds} >= {"dense", "factor", None}
    assert {f["form"] for f in folds} & {"truncated", "grouped"}
    assert any(f["predicted_error"] is not None for f in folds) and any(f["error"] is None for f in folds)
    outputs = [o for r in reports.values() for o in (r.get("verification") or r).get("outputs", [])]
    assert {o["agreement"] is None for o in outputs} == {True, False}
    assert {o["agreement_bound"] is None for o in outputs} == {True, False}
    for field in ("accuracy", "reference_accuracy", "accuracy_drop", "max_drop", "accuracy_drop_bound"):
        assert {o[field] is None for o in outputs} == {True, False}, field
    assert reports["optimize, not verified"]["verification"] is None
    assert reports["optimize, nothing to fold"]["verification"]["n_input_sets"] == 0
    assert reports["analyze, remarks"]["remarks"] and reports["analyze, spectrum"]["spectra"]
    assert not reports["verify, failed"]["passed"]
    assert [a["form"] for f in folds for a in f["attempts"]] == ["truncated"]
    assert {r["truncation"]["met"] for r in reports.values() if r.get("truncation")} == {True, False}
    assert all(r["truncation"] is None for k, r in reports.items() if "optimize" in k and "budget" not in k
               and "truncated" not in k and "pruned" not in k) and reports["analyze"]["verdict"]
    pruned = [r for k, r in reports.items() if k.startswith("prune")]
    assert {r["verification"] is None for r in pruned} == {True, False} and any(r["search"] for r in pruned)
    assert {r["verification"]["passed"] for r in pruned if r["verification"]} == {True, False}
    for r in pruned:  # what the pairs really lost, counted from their channels
        assert r["removed"] == pytest.approx(1 - sum(p["kept"] for p in r["pairs"]) / sum(p["channels"] for p in r["pairs"]))
    assert {r["removed"] > 0 for r in pruned} == {True, False}  # share 0.04 of 12 channels rounds to none
    pruning = [r["pruning"] for r in reports.values() if "pruning" in r]
    assert None in pruning and any(p and p["search"] and len(p["tried"]) >= 2 and p["removed"] > 0 for p in pruning)
    assert {r["truncation"]["budget"] is None for r in reports.values() if r.get("truncation")} == {False}
    assert {u["ended_by"] is None for r in reports.values() for u in r.get("unfolded", [])} == {True, False}


@pytest.mark.parametrize("kind", ["optimize", "analyze", "verify"])
def test_the_schema_requires_a_1_x_version(validator, reports, kind):
    report = copy.deepcopy(reports[kind])
    del report["schema_version"]
    assert not validator.is_valid(report)
    assert not validator.is_valid(report | {"schema_version": "2.0"})
    assert validator.is_valid(report | {"schema_version": "1.7"})


@pytest.mark.parametrize("where", ["top", "before", "fold", "error", "verification output"])
def test_an_undeclared_field_is_rejected(validator, reports, where):
    """Every field is in the schema: a report with one it does not describe fails."""
    report = copy.deepcopy(reports["optimize"])
    target = {"top": report, "before": report["before"], "fold": report["folds"][0],
              "error": report["folds"][0]["error"], "verification output": report["verification"]["outputs"][0]}
    target[where]["undocumented"] = 1
    assert not validator.is_valid(report)


def test_a_wrong_type_is_rejected(validator, reports):
    report = copy.deepcopy(reports["optimize"])
    report["folds"][0]["status"] = "maybe"
    assert not validator.is_valid(report)
