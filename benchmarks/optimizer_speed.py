"""Speed and memory of the optimizer itself, beside the I/O floor and the peers a user would reach for.

    python benchmarks/optimizer_speed.py [--sizes 100MB,1GB,2.3GB,512MB-4096wide] [--peers] [--chains 1,4,16,64]

Models are residual MLP stacks with slopes at 1, generated on the fly with external data (see
synthetic.py); the 4096-wide one folds 4096x4096 products (layers as wide as a large transformer's).
For each, in one run: ``onnx-collapse analyze``, ``onnx-collapse optimize --no-verify``, ``onnx-collapse verify``
(verification alone), the full ``optimize``, and the I/O floor (``onnx.load`` + ``onnx.save`` of the same
model, external data). Every command runs in its own process; wall time and peak resident memory are
measured from outside (measure.py); "imports" is the peak of a process that only imports the libraries. With ``--peers``: onnxsim and onnxslim on the same models.
Then the cost per chain at 1, 4, 16, 64 chains (median of 3, in process, no verification).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from measure import python_measured, run_measured
from synthetic import write_mlp_stack

import onnx_collapse

# name: (d, hidden, blocks)
SIZES = {"100MB": (256, 12_288, 4), "1GB": (256, 122_880, 4), "2.3GB": (128, 750_000, 3),
         "512MB-4096wide": (4096, 4096, 4)}

IO_FLOOR = """
import sys, onnx
m = onnx.load(sys.argv[1])
onnx.save_model(m, sys.argv[2], save_as_external_data=True, location="floor.onnx.data")
"""


def exe() -> str:
    found = shutil.which("onnx-collapse")
    if found is None:
        sys.exit("onnx-collapse is not installed (pip install -e .)")
    return found


BASELINE = "import numpy, onnx, onnxruntime, onnx_collapse.cli"


def measure_size(name: str, folder: Path, peers: bool) -> dict:
    d, hidden, blocks = SIZES[name]
    src = folder / "model.onnx"
    weights = write_mlp_stack(src, d=d, hidden=hidden, blocks=blocks)
    row = {"model": name, "weight_bytes": weights, "baseline_bytes": python_measured(BASELINE)[1]}
    steps = {
        "io_floor": lambda: python_measured(IO_FLOOR, src, folder / "floor.onnx"),
        "analyze": lambda: run_measured(exe(), "analyze", src),
        "optimize_no_verify": lambda: run_measured(exe(), "optimize", src, folder / "out.onnx", "--no-verify"),
        "verify_only": lambda: run_measured(exe(), "verify", src, folder / "out.onnx"),
        "optimize": lambda: run_measured(exe(), "optimize", src, folder / "out2.onnx"),
    }
    if peers:
        steps["onnxsim"] = lambda: run_measured(shutil.which("onnxsim") or "onnxsim", src, folder / "sim.onnx",
                                                "--save-as-external-data", timeout=900)
        steps["onnxslim"] = lambda: run_measured(shutil.which("onnxslim") or "onnxslim", src, folder / "slim.onnx",
                                                 "--save-as-external-data", timeout=900)
    for step, call in steps.items():
        try:
            code, peak, wall = call()
        except Exception as exc:  # noqa: BLE001 - a peer that times out or is missing is reported, not fatal
            code, peak, wall = -1, 0, float("nan")
            print(f"{name} {step}: {type(exc).__name__}", file=sys.stderr)
        row[step] = {"ok": code == 0, "seconds": wall, "peak_bytes": peak}
        for leftover in folder.glob("floor.onnx*"):
            leftover.unlink()
    return row


def chain_scaling(counts: list[int], folder: Path) -> list[dict]:
    rows = []
    for n in counts:
        src = folder / f"chains{n}.onnx"
        write_mlp_stack(src, d=256, hidden=1024, blocks=n)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            onnx_collapse.optimize(src, output=folder / f"chains{n}.out.onnx", verify=False)
            times.append(time.perf_counter() - start)
        rows.append({"chains": n, "seconds": statistics.median(times)})
    return rows


def print_tables(rows: list[dict], scaling: list[dict]) -> None:
    steps = [s for s in ("io_floor", "analyze", "optimize_no_verify", "verify_only", "optimize", "onnxsim",
                         "onnxslim") if any(s in r for r in rows)]
    print("| model | weights | " + " | ".join(steps)
          + " | optimize (no verify) / I/O floor | analyze / optimize (no verify) | peak / weights "
            "| (peak - imports) / weights |")
    print("|---" * (len(steps) + 6) + "|")
    for r in rows:
        cells = []
        for s in steps:
            m = r.get(s)
            cells.append("-" if m is None else (f"{m['seconds']:.1f} s, {m['peak_bytes'] / 2**30:.2f} GiB"
                                                if m["ok"] else "failed"))
        floor, ours = r["io_floor"], r["optimize_no_verify"]
        peak = max(r[s]["peak_bytes"] for s in ("optimize_no_verify", "optimize", "verify_only"))
        print(f"| {r['model']} | {r['weight_bytes'] / 2**30:.2f} GiB | " + " | ".join(cells)
              + f" | {ours['seconds'] / floor['seconds']:.2f} | {r['analyze']['seconds'] / ours['seconds']:.2f} "
              + f"| {peak / r['weight_bytes']:.2f} "
              + f"| {(peak - r['baseline_bytes']) / r['weight_bytes']:.2f} |")
    if scaling:
        print()
        print("| chains | optimize --no-verify (s) | s per chain |")
        print("|---|---|---|")
        for r in scaling:
            print(f"| {r['chains']} | {r['seconds']:.2f} | {r['seconds'] / r['chains']:.3f} |")


def run(sizes: list[str], peers: bool, chains: list[int]) -> tuple[list[dict], list[dict]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-collapse-bench-") as tmp:
        for name in sizes:
            folder = Path(tmp) / name
            folder.mkdir()
            rows.append(measure_size(name, folder, peers))
            shutil.rmtree(folder)
        scaling = chain_scaling(chains, Path(tmp))
    return rows, scaling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--peers", action="store_true", help="also run onnxsim and onnxslim")
    parser.add_argument("--chains", default="1,4,16,64")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows, scaling = run([s for s in args.sizes.split(",") if s], args.peers,
                        [int(c) for c in args.chains.split(",") if c])
    print_tables(rows, scaling)
    if args.json:
        args.json.write_text(json.dumps({"sizes": rows, "chains": scaling}, indent=2))


if __name__ == "__main__":
    main()
