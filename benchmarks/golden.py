"""Every shipped model's optimized output, hashed, to show a refactor changes nothing a user gets.

    python benchmarks/golden.py record golden.json   # before the change
    python benchmarks/golden.py check golden.json    # after it: exits 1 naming every case that differs

Each case optimizes one model of models/ with one set of options (exact folds, low-rank budgets with each
allocator, calibration on seeded rows) and hashes the written .onnx file's bytes and the report's JSON (the
timing-free parts). ``analyze`` JSON is hashed too. Hashes depend on numpy's LAPACK and onnxruntime's build:
compare on one machine.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted((ROOT / "models").glob("*.onnx"))

OPTION_SETS = {
    "exact": {},
    "budget-0.5-all": {"low_rank": "all", "rank_budget": 0.5},
    "budget-0.6-macs-grouped": {"low_rank": "all", "rank_budget": 0.6, "budget_metric": "macs", "max_groups": 2},
    "max-error-0.3": {"low_rank": "all", "max_error": 0.3},
    "no-verify-0.5": {"low_rank": "all", "rank_budget": 0.5, "verify": False},
    "calibrated": {"calibrate": "rows"},
    "calibrated-budget-0.6": {"calibrate": "rows", "low_rank": "all", "rank_budget": 0.6},
    "output-aware-0.6": {"calibrate": "rows", "low_rank": "all", "rank_budget": 0.6, "allocator": "output",
                         "metric": "allclose", "atol": 10.0, "rtol": 10.0},
}


def calibration_rows(model: onnx.ModelProto, n: int = 48, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded normal rows for every graph input (dynamic dims set to 2 after the batch)."""
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    rows = {}
    for value in model.graph.input:
        if value.name in init:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 2 for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        rows[value.name] = rng.standard_normal((n, *dims[1:])).astype(dtype)
    return rows


SCHEMA_1_1 = "1.1"  # the report fields hashed: those of schema 1.1 (later minor versions only add fields)
ADDED_SINCE_1_1 = ("seconds_before", "seconds_after")  # 1.2


def _clean(payload):
    """The report's JSON as schema 1.1 wrote it, without what varies from run to run (timings, paths)."""
    if isinstance(payload, dict):
        if "schema_version" in payload:
            payload = {**payload, "schema_version": SCHEMA_1_1}
        return {k: _clean(v) for k, v in payload.items()
                if k not in ("seconds", "elapsed", "file_bytes", *ADDED_SINCE_1_1)}
    if isinstance(payload, list):
        return [_clean(v) for v in payload]
    if isinstance(payload, str) and tempfile.gettempdir() in payload:
        return "<tmp>"
    return payload


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def run_case(path: Path, name: str, overrides: dict, folder: Path) -> dict:
    from onnx_collapse import CollapseError, optimize

    overrides = dict(overrides)
    if overrides.get("calibrate") == "rows":
        overrides["calibrate"] = calibration_rows(onnx.load(str(path), load_external_data=False))
    out = folder / f"{path.stem}.{name}.onnx"
    try:
        _, report = optimize(str(path), output=str(out), **overrides)
    except CollapseError as exc:
        return {"error": str(exc)}
    report_hash = digest(json.dumps(_clean(report.to_dict()), sort_keys=True).encode())
    model_hash = digest(out.read_bytes()) if out.exists() else None
    return {"model": model_hash, "report": report_hash}


def run_analyze(path: Path) -> dict:
    from onnx_collapse import analyze

    found = analyze(str(path), spectrum=True, low_rank="all")
    payload = {"report": _clean(found.report.to_dict()), "remarks": found.remarks,
               "tradeoff": found.tradeoff}
    return {"analyze": digest(json.dumps(payload, sort_keys=True, default=str).encode())}


def collect() -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in MODELS:
            for name, overrides in OPTION_SETS.items():
                results[f"{path.name} {name}"] = run_case(path, name, overrides, Path(tmp))
            results[f"{path.name} analyze"] = run_analyze(path)
            print(f"{path.name}: done", file=sys.stderr, flush=True)
    return results


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "check"):
        print(__doc__)
        return 2
    mode, file = argv
    results = collect()
    if mode == "record":
        Path(file).write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"{len(results)} cases recorded in {file}")
        return 0
    before = json.loads(Path(file).read_text())
    differ = [k for k in sorted(set(before) | set(results)) if before.get(k) != results.get(k)]
    for k in differ:
        print(f"DIFFERS {k}: before {before.get(k)} after {results.get(k)}")
    print(f"{len(results) - len(differ)} of {len(results)} cases identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
