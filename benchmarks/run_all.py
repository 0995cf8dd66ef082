"""``make bench``: inference speed and optimizer speed in one run, then one summary table of ratios.

    python benchmarks/run_all.py [--quick]

``--quick`` uses fewer repeats and skips the 2.3 GB model. Writes benchmarks/out/bench.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import inference_speed
import optimizer_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    infer = inference_speed.run(list(inference_speed.WORKLOADS), repeats=10 if args.quick else 30)
    sizes = ["100MB", "1GB", "512MB-4096wide"] if args.quick else list(optimizer_speed.SIZES)
    opt_rows, scaling = optimizer_speed.run(sizes, peers=True, chains=[1, 4, 16, 64])

    print("\n## Inference (onnxruntime CPU, default optimizations)\n")
    inference_speed.print_table(infer)
    print("\n## Optimizer\n")
    optimizer_speed.print_tables(opt_rows, scaling)

    print("\n## Summary of ratios\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    for r in infer:
        target = ">= 0.9" if r["forms"] == ["dense"] else "-"
        print(f"| speed-up / MAC ratio, {r['workload']} batch {r['batch']} | {r['speedup_vs_macs']:.2f} | {target} |")
    for r in opt_rows:
        ours, floor = r["optimize_no_verify"], r["io_floor"]
        peak = max(r[s]["peak_bytes"] for s in ("optimize_no_verify", "optimize", "verify_only"))
        print(f"| optimize --no-verify / I/O floor, {r['model']} | {ours['seconds'] / floor['seconds']:.2f} | <= 2 |")
        print(f"| analyze / optimize --no-verify, {r['model']} | {r['analyze']['seconds'] / ours['seconds']:.2f} "
              "| <= 1.2 |")
        print(f"| peak memory / weight bytes, {r['model']} | {peak / r['weight_bytes']:.2f} | <= 1.5 |")
        for peer in ("onnxsim", "onnxslim"):
            if r.get(peer, {}).get("ok"):
                print(f"| {peer} time / ours (full optimize), {r['model']} "
                      f"| {r[peer]['seconds'] / r['optimize']['seconds']:.2f} | - |")
            elif peer in r:
                print(f"| {peer}, {r['model']} | failed | - |")
    per_chain = [s["seconds"] / s["chains"] for s in scaling]
    print(f"| seconds per chain at 64 / at 4 chains | {per_chain[-1] / per_chain[1]:.2f} | ~1 (linear) |")

    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"inference": infer, "optimizer": opt_rows, "chains": scaling},
                                               indent=2))


if __name__ == "__main__":
    main()
