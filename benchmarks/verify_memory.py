"""Peak memory and time of verifying on many rows: set by set (since de006b8) against the commit before, which
kept every model's outputs for all the verification rows in memory.

    python benchmarks/verify_memory.py [--lines 480,1920] [--before ffb5622] [--after HEAD]
        [--only verify|rank-budget|prune-share] [--out FILE.md]

A real network: PP-OCRv4 rec from ``rapidocr-onnxruntime==1.4.4`` (``pip install rapidocr-onnxruntime==1.4.4
pillow``), on text lines rendered offline with Pillow (realdata.py; 96 calibration lines, seed 1, and N
verification lines, seed 2). Its output is 40 x 6625 floats a line (1 MB), so 1920 lines of outputs are 2 GB a
model. For each N, both commits, each command in its own process (measure.py), from ``git worktree``s of
the two commits (``PYTHONPATH``; the installed package is not used):

- ``verify``: the original against itself, ``--metric ctc``;
- ``optimize --low-rank all --calibrate --rank-budget auto --metric ctc --min-agreement 0.96
  --confidence 0.9``: the budget search (six budgets, each model run on the N lines and compared);
- ``optimize --prune-share 0.2 --low-rank all --calibrate --allocator output --rank-budget 0.8 --metric ctc
  --min-agreement 0.9``: one pruned and truncated model verified, each fold's own error measured on the N
  lines first (``revert.local_error``, set by set since e4ffe9b). ``--prune-share`` came after ffb5622, so give
  this one a later ``--before`` (3a94d32, the commit before e4ffe9b).

Prints the table (and writes it to ``--out``): peak resident memory and wall time of each, the ratio of the
two commits side by side, and whether both wrote the same model (the search must choose the same budget).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import realdata
from measure import run_measured

ROOT = Path(__file__).resolve().parents[1]
REC = "ch_PP-OCRv4_rec_infer.onnx"


def worktree(commit: str, where: Path) -> Path:
    """A checkout of ``commit`` at ``where`` (``git worktree add --detach``)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), commit], check=True,
                   capture_output=True)
    return where


def measured(tree: Path, args: list[str]) -> tuple[int, int, float]:
    """(exit code, peak bytes, seconds) of ``python -m onnx_collapse ARGS`` run from the checkout ``tree``."""
    os.environ["PYTHONPATH"] = str(tree)  # measure.py's launcher, and the command, inherit it
    try:
        return run_measured(sys.executable, "-m", "onnx_collapse", *args, timeout=3600)
    finally:
        os.environ.pop("PYTHONPATH", None)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", default="480,1920", help="verification lines, comma-separated")
    p.add_argument("--before", default="ffb5622", help="the commit that kept every set's outputs")
    p.add_argument("--after", default="HEAD")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    p.add_argument("--only", choices=["verify", "rank-budget", "prune-share"], default=None,
                   help="run one of the three commands")
    args = p.parse_args(argv)
    model_file = realdata.model_path(REC)
    model = onnx.load(model_file)
    labels = realdata.ctc_labels(model)
    name = model.graph.input[0].name
    lines = [int(n) for n in args.lines.split(",")]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="verify-memory-") as tmp:
        tmp = Path(tmp)
        trees = {label: worktree(commit, tmp / label) for label, commit in (("before", args.before),
                                                                            ("after", args.after))}
        commits = {label: subprocess.run(["git", "-C", str(t), "rev-parse", "--short", "HEAD"], check=True,
                                         capture_output=True, text=True).stdout.strip() for label, t in trees.items()}
        try:
            calib = tmp / "calib.npz"
            np.savez(calib, **{name: realdata.rec_dataset(labels, 96, seed=1)[0]})
            rows = []
            for n in lines:
                verify = tmp / f"verify{n}.npz"
                np.savez(verify, **{name: realdata.rec_dataset(labels, n, seed=2)[0]})
                commands = {  # by the key --only names
                    "verify": ("verify", ["verify", model_file, model_file, "--inputs", str(verify), "--metric", "ctc",
                               "--quiet"]),
                    "rank-budget": ("optimize --rank-budget auto", [
                        "optimize", model_file, "{out}", "--low-rank", "all", "--calibrate", str(calib),
                        "--rank-budget", "auto", "--inputs", str(verify), "--metric", "ctc", "--min-agreement",
                        "0.96", "--confidence", "0.9", "--quiet"]),
                    "prune-share": ("optimize --prune-share 0.2 --rank-budget 0.8", [
                        "optimize", model_file, "{out}", "--prune-share", "0.2", "--low-rank", "all", "--calibrate",
                        str(calib), "--allocator", "output", "--rank-budget", "0.8", "--inputs", str(verify),
                        "--metric", "ctc", "--min-agreement", "0.9", "--quiet"]),
                }
                for key, (what, command) in commands.items():
                    if args.only and args.only != key:
                        continue
                    got = {}
                    for label, tree in trees.items():
                        out = tmp / f"{label}-{n}.onnx"
                        code, peak, wall = measured(tree, [c.replace("{out}", str(out)) for c in command])
                        got[label] = (code, peak, wall, digest(out) if "{out}" in command else "")
                        print(f"{n} lines, {what}, {label}: exit {code}, {peak / 2**20:.0f} MiB, {wall:.0f} s",
                              flush=True)
                    rows.append((n, what, got))
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    table = [
        f"# Verification memory, set by set (`python benchmarks/verify_memory.py --lines {args.lines}"
        + (f" --only {args.only}" if args.only else "") + "`)",
        "",
        f"- model: {REC} from rapidocr-onnxruntime {realdata.package_version()}; before: {commits['before']} "
        f"(every set's outputs in memory), after: {commits['after']} (compared set by set, the original's "
        "outputs on disk)",
        f"- machine: {platform.machine()} {platform.system()}, nproc {os.cpu_count()}; "
        f"date (UTC) {time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))}; full run {time.time() - started:.0f} s",
        "",
        "| verification lines | command | peak MiB before | peak MiB after | after / before | s before | s after "
        "| same output |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, what, got in rows:
        (c0, p0, w0, d0), (c1, p1, w1, d1) = got["before"], got["after"]
        same = "" if not d0 else ("yes" if d0 == d1 else f"no ({d0} / {d1})")
        status = "" if c0 == c1 == 0 else f" (exit {c0} / {c1})"
        table.append(f"| {n} | `{what}`{status} | {p0 / 2**20:,.0f} | {p1 / 2**20:,.0f} | {p1 / p0:.2f} | "
                     f"{w0:.0f} | {w1:.0f} | {same} |")
    text = "\n".join(table) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
