"""LayerCollapse end to end on scikit-learn's digits: train with the penalty, export, collapse, measure.

    python benchmarks/layercollapse_digits.py [--epochs 60] [--out benchmarks/out]

For each penalty strength: train the MLP (64 -> 128 x4 -> 10; the penalty acts on the last three
activations, the first stays a free PReLU), export it to ONNX with torch's default exporter, run
``onnx_collapse.optimize`` verified on the validation split (top-1 agreement >= 99.5 %, or the default
element-wise float32 tolerance), and measure test accuracy of the exported and the collapsed model in
onnxruntime. "snapped" rows set slopes within 0.05 of 1 to exactly 1 and fine-tune a few epochs before
export, so the fold is exact.
Prints a table, keeps it in benchmarks/results/layercollapse_digits.md (spliced into docs/results.md by
``make readme-tables``) and writes accuracy-vs-parameters to OUT/layercollapse_digits.png (with matplotlib).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from digits import mlp, onnx_accuracy, pyplot, save_figure, splits, study_main, train, write_table

import onnx_collapse
from onnx_collapse.torch import collapsible_slopes, export_onnx, snap_slopes

# (penalty, snap slopes to 1 and fine-tune, --slope-tol, verification metric)
VARIANTS = ((0.0, False, 0.05, "top1"), (0.01, False, 0.05, "top1"), (0.01, False, 0.5, "top1"),
            (0.1, False, 0.05, "top1"), (1.0, False, 0.05, "allclose"), (1.0, False, 0.05, "top1"),
            (1.0, True, 0.05, "allclose"), (10.0, False, 0.05, "top1"), (10.0, True, 0.05, "allclose"))


def collapse(model, example, val, workdir: Path, slope_tol: float, metric: str) -> dict:
    path = workdir / "model.onnx"
    export_onnx(model, torch.from_numpy(example), path)
    inputs = workdir / "val.npz"
    np.savez(inputs, x=val[0])
    out, report = onnx_collapse.optimize(path, inputs=str(inputs), slope_tol=slope_tol, metric=metric,
                                         min_agreement=0.995)
    return {"exported": onnx.load(str(path)), "collapsed": out, "report": report}


def run(epochs: int, out_dir: Path) -> list[dict]:
    torch.set_num_threads(2)
    train_set, val, test = splits()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lam, snapped, slope_tol, metric in VARIANTS:
            model = train(mlp(), train_set, lam, epochs=epochs)
            if snapped:
                snap_slopes(collapsible_slopes(model)[1:], tol=0.05)
                model = train(model, train_set, 0.0, epochs=max(5, epochs // 6), lr=5e-4)
            slopes = [float(s.weight.detach().mean()) for s in collapsible_slopes(model)[1:]]
            result = collapse(model, test[0][:4], val, Path(tmp), slope_tol, metric)
            report = result["report"]
            rows.append({
                "lambda": lam, "snapped": snapped, "slope_tol": slope_tol, "metric": metric, "slopes": slopes,
                "folded": sum(len(f.layers) - 1 for f in report.folds if f.status == "folded"),
                "reverted": sum(f.status == "reverted" for f in report.folds),
                "skipped": sum(f.status == "skipped" for f in report.folds),
                "params_before": report.before.params, "params_after": report.after.params,
                "macs_before": report.before.linear_macs, "macs_after": report.after.linear_macs,
                "acc_exported": onnx_accuracy(result["exported"], *test),
                "acc_collapsed": onnx_accuracy(result["collapsed"], *test),
                "why": "; ".join(sorted({f.reason.split(";")[0] for f in report.folds if f.status != "folded"})),
            })
    _print(rows)
    _plot(rows, out_dir)
    return rows


def _print(rows: list[dict]) -> None:
    lines = ["| penalty | snapped | --slope-tol | verified by | penalised slopes | layers folded | reverted | params "
             "| removed | test acc exported | test acc collapsed | change (points) |", "|---" * 12 + "|"]
    for r in rows:
        removed = 1 - r["params_after"] / r["params_before"]
        metric = "top-1 >= 99.5% (val)" if r["metric"] == "top1" else "allclose (default)"
        lines.append(f"| {r['lambda']:g} | {'yes' if r['snapped'] else 'no'} | {r['slope_tol']:g} | {metric} "
                     f"| {min(r['slopes']):.3f}..{max(r['slopes']):.3f} | {r['folded']} of 3 | {r['reverted']} "
                     f"| {r['params_before']:,} -> {r['params_after']:,} | {100 * removed:.1f}% "
                     f"| {100 * r['acc_exported']:.2f}% | {100 * r['acc_collapsed']:.2f}% "
                     f"| {100 * (r['acc_collapsed'] - r['acc_exported']):+.2f} |")
    write_table("layercollapse_digits", lines)
    for r in rows:
        if r["why"]:
            print(f"penalty {r['lambda']:g}{' snapped' if r['snapped'] else ''}, slope-tol {r['slope_tol']:g}, "
                  f"{r['metric']}: "
                  f"left alone: {r['why']}")


def _plot(rows: list[dict], out_dir: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    labels: dict[tuple[float, float], list[str]] = {}
    for r in rows:
        marker = "s" if r["snapped"] else "o"
        ax.scatter(r["params_before"], 100 * r["acc_exported"], c="gray", marker=marker)
        ax.scatter(r["params_after"], 100 * r["acc_collapsed"], c="tab:blue", marker=marker, alpha=0.7)
        tag = f"λ={r['lambda']:g}{'*' if r['snapped'] else ''}"
        labels.setdefault((r["params_after"], 100 * r["acc_collapsed"]), []).append(tag)
    for (x, y), tags in labels.items():
        ax.annotate(", ".join(dict.fromkeys(tags)), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (gray: exported, blue: after onnx-collapse; squares/*: snapped)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("LayerCollapse on digits: accuracy vs. size")
    save_figure(fig, out_dir, "layercollapse_digits.png")


def main() -> None:
    study_main(__doc__, run)


if __name__ == "__main__":
    main()
