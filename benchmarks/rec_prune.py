"""Channel pruning (``onnx_collapse.prune``) on the PP-OCRv4 recogniser, in-process, read against the true text.

    python benchmarks/rec_prune.py --share 0.3                      # the tool as it is
    python benchmarks/rec_prune.py --share 0.3 --all-pairs          # pairs without a depthwise conv too
    python benchmarks/rec_prune.py --share 0.3 --then-budget 0.8    # then low-rank at a weight budget

Needs ``pip install rapidocr-onnxruntime==1.4.4`` (the model ships in its wheel) and Pillow; data are rendered
offline with the seeds ``real_models.py`` uses (calibration 101, verification 202, evaluation 303). The tool
verifies on the 32 verification lines (``--metric ctc``, ``--min-agreement`` 0: every share is written);
the evaluation lines judge it. ``--all-pairs`` sets ``prune.DEPTHWISE_ONLY`` off for this process.
The first version of this script (commit 2cd5ba5) was the prototype the tool's pruning came from; its
``--allocate minimax|output`` rows are in docs/results.md.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time

import onnx
import realdata as rd
from real_models import run_batches, session


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--share", default="0.3", help="share of each pair's channels removed, or auto")
    p.add_argument("--min-agreement", type=float, default=0.0, help="the tool's criterion on 32 lines")
    p.add_argument("--all-pairs", action="store_true", help="prune pairs without a depthwise convolution too")
    p.add_argument("--then-budget", type=float, default=None,
                   help="then optimize --low-rank all --allocator output --budget-metric params at this budget")
    p.add_argument("--lines", default="96,480", help="calibration,evaluation lines")
    args = p.parse_args(argv)
    from onnx_collapse import optimize
    pruning = importlib.import_module("onnx_collapse.prune")  # the module (onnx_collapse.prune is the function)

    pruning.DEPTHWISE_ONLY = not args.all_pairs
    path = rd.model_path(rd.REC_FILE)
    original = onnx.load(path)
    labels = rd.ctc_labels(original)
    n_calib, n_eval = (int(v) for v in args.lines.split(","))
    calib, _ = rd.rec_dataset(labels, n_calib, seed=101)
    held, _ = rd.rec_dataset(labels, 32, seed=202)
    x, truth = rd.rec_dataset(labels, n_eval, seed=303)
    share = args.share if args.share == "auto" else float(args.share)
    start = time.perf_counter()
    model, report = pruning.prune(path, share=share, calibrate={"x": calib}, inputs={"x": held}, metric="ctc",
                                  min_agreement=args.min_agreement)
    if args.then_budget is not None:
        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(model, f"{tmp}/pruned.onnx")
            model, _ = optimize(f"{tmp}/pruned.onnx", low_rank="all", calibrate={"x": calib}, allocator="output",
                                verify=False, rank_budget=args.then_budget, budget_metric="params")
    seconds = time.perf_counter() - start
    reference = rd.ctc_greedy(run_batches(session(path), "x", x, 8), labels)
    text = rd.ctc_greedy(run_batches(session(model.SerializeToString()), "x", x, 8), labels)
    scores, base = rd.rec_scores(text, truth, reference), rd.rec_scores(reference, truth)
    raw = sum(a == b for a, b in zip(text, reference)) / len(text)  # unstripped: what --metric ctc compares
    weights = rd.count_weights(model)
    macs = rd.measured_macs(model, {"x": x[:1]})["total"]
    print(f"{vars(args)}: share {report.share:g}, {sum(q.kept < q.channels for q in report.pairs)} pairs pruned, "
          f"weights {weights:,} ({weights / rd.count_weights(original) - 1:+.1%}), "
          f"MACs {macs:,} ({macs / rd.measured_macs(original, {'x': x[:1]})['total'] - 1:+.1%}), "
          f"exact {scores['exact']:.1%} (original {base['exact']:.1%}), same decode {scores['same_decode']:.1%} "
          f"(unstripped {raw:.1%}), "
          f"{seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
