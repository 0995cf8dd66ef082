"""Speed and accuracy of recogniser models against the original, side by side in one run.

    pip install rapidocr-onnxruntime==1.4.4
    python benchmarks/rec_speed.py MODEL.onnx [MODEL.onnx ...] [--rounds 41] [--lines 960]

Each model is run beside PP-OCRv4's text recogniser as rapidocr-onnxruntime ships it, the way
``real_models.py`` times its rows (onnxruntime CPU, 2 intra-op threads, batch 8 lines, the two alternating,
which goes first swapped each round), with more rounds: the speed-up as the ratio of the medians, of the
fastest runs, and the median of each round's own ratio (the two runs of a round are back to back, so a slow
spell of this shared machine slows both). Accuracy is read on the evaluation lines of ``real_models.py``
(seed 303, or ``--seed``) against their true text, with the drop from the original's and its paired
standard error (a point on 960 lines is within about one standard error: more lines resolve a smaller
drop). Prints one markdown row per model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
import realdata as rd
from real_models import RecTask, interleaved_latency, measure_model, session


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="compressed recogniser models (same input and output)")
    p.add_argument("--rounds", type=int, default=41, help="interleaved timing rounds per model")
    p.add_argument("--lines", type=int, default=960, help="evaluation lines read against their true text")
    p.add_argument("--seed", type=int, default=303, help="seed of the rendered lines (303: real_models.py's "
                   "evaluation lines, the first 960 of any count)")
    args = p.parse_args(argv)
    task = RecTask(1, 1, args.lines, args.seed)
    original = measure_model(task, task.file, None)
    print(f"original: {original['weights']:,} weights, {original['macs']['total']:,} MACs, "
          f"exact {original['scores']['exact']:.1%} of {args.lines} lines (seed {args.seed}) "
          f"({rd.PACKAGE} {rd.package_version()})", file=sys.stderr)
    print("| model | weights | MACs | lines exact | drop (pt, ± standard error) | "
          "speed-up: medians, fastest, per-round median |")
    print("|---|---|---|---|---|---|")
    right = rd.exact_lines(rd.ctc_greedy(original["outputs"], task.labels), task.truth)
    del original["outputs"]  # 1 GB per 960 lines: one model's outputs in memory at a time
    base = session(task.file)
    x = task.x[:task.time_batch]
    for path in args.models:
        onnx.checker.check_model(path)
        found = measure_model(task, path, None)
        drop, se = rd.paired_drop(right, rd.exact_lines(rd.ctc_greedy(found["outputs"], task.labels), task.truth))
        del found["outputs"]
        lat = interleaved_latency(base, session(path), task.input_name, x, args.rounds)
        print(f"| {Path(path).name} | {found['weights'] / original['weights'] - 1:+.1%} | "
              f"{found['macs']['total'] / original['macs']['total'] - 1:+.1%} | {found['scores']['exact']:.1%} | "
              f"{100 * drop:.2f} ± {100 * se:.2f} | "
              f"{lat['speedup_median']:.2f}x, {lat['speedup_min']:.2f}x, {lat['speedup_paired']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
