"""Calibrated compression on scikit-learn digits: least-squares collapse, and activation-aware ALDS.

    python benchmarks/calibrated.py [--epochs 60] [--out benchmarks/out]

Everything is trained in the script (seeded). The calibration data is the training split (what a user has
after training); every number is measured on the test split, which nothing was fitted or calibrated on.

(a) LayerCollapse-trained MLPs (64 -> 128 x4 -> 10; the penalty on the last three PReLUs) whose slopes end
    near 0.6, 0.9, 0.95 and 0.99 (``--slope-tol`` wide enough to take every penalised slope): the plain
    fold ``W1 W2 W3 W4`` vs the calibrated fold (least squares to the
    chain's real outputs, ridge toward the plain fold): worst and mean logit error against the uncompressed
    model, and test accuracy.
(b) Data-free ALDS vs activation-aware ALDS (spectra of the weights whitened by their calibration inputs,
    for a convolution the windows it reads) at budgets 30-70 %, every linear and conv layer a target, on
    the digits MLP, the token MLP stack of alds_budget.py and the CNN of alds_cnn.py: test accuracy and
    output error. One test split of 360 images moves accuracy in steps of 0.28 points, so (b) is
    cross-validated: 5 stratified folds, each model trained and calibrated on 4/5 of the digits and
    tested on the rest, pooled over all 1,797 images.

Prints the tables and writes each as markdown to benchmarks/results/.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from alds_budget import TokenMLPStack
from alds_cnn import WEIGHT_DECAY, resnet
from digits import SEED, mlp, splits, study_main, train, write_table
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold

import onnx_collapse
from onnx_collapse.torch import collapsible_slopes, export_onnx

SLOPE_TOL = 0.15  # wide enough for slopes near 0.9 (the ~0.6 variant gets 0.55: slopes far from 1 on purpose)
# (target slopes, penalty, epochs): Adam moves a slope about lr per step, so the epochs set how close it gets
LC_VARIANTS = (("~0.6", 0.005, 60), ("~0.90", 0.02, 60), ("~0.95", 0.05, 60), ("~0.99", 1.0, 72))
BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7)


def logits(model: onnx.ModelProto | bytes, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def compare(reference: np.ndarray, model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> dict:
    got = logits(model, x)
    diff = np.abs(got - reference)
    return {"worst": float(diff.max()), "mean": float(diff.mean()), "accuracy": float((got.argmax(-1) == y).mean()),
            "output_error": float(np.linalg.norm(got - reference) / np.linalg.norm(reference))}


def collapse_study(epochs: int, train_set, test, workdir: Path) -> list[dict]:
    """(a): plain vs calibrated fold of LC-trained MLPs."""
    calib = workdir / "calib.npz"
    np.savez(calib, x=train_set[0])
    rows = []
    for label, lam, lc_epochs in LC_VARIANTS:
        model = train(mlp(), train_set, lam, epochs=round(lc_epochs * epochs / 60))
        slopes = [float(s.weight.detach().mean()) for s in collapsible_slopes(model)[1:]]
        path = workdir / "lc.onnx"
        export_onnx(model, torch.from_numpy(test[0][:4]), path)
        reference = logits(onnx.load(str(path)), test[0])
        base = float((reference.argmax(-1) == test[1]).mean())
        for how, calibrate in (("plain", None), ("calibrated", str(calib))):
            tol = max(SLOPE_TOL, 1.0 - min(slopes) + 0.05)
            out, report = onnx_collapse.optimize(path, slope_tol=tol, calibrate=calibrate, verify=False)
            folds = [f for f in report.folds if f.status == "folded"]
            rows.append({"target": label, "penalty": lam, "slopes": slopes, "fold": how, "base": base,
                         "folded": sum(len(f.layers) for f in folds), "calibrated": any(f.calibrated for f in folds),
                         "params": (report.before.params, report.after.params),
                         **compare(reference, out, *test)})
    return rows


ALDS_FOLDS = 5  # (b) is cross-validated: every digit is a test image once, for a model that never saw it
CNN_EPOCHS = 40


def cv_splits():
    """(train, test) pairs of a seeded, stratified 5-fold split of all 1,797 digits."""
    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    for train_idx, test_idx in StratifiedKFold(ALDS_FOLDS, shuffle=True, random_state=SEED).split(x, y):
        yield (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def alds_models(epochs: int):
    """(name, train on a split -> module, input layout) of the three networks of (b)."""
    def tokens(a):
        return a.reshape(-1, 8, 8)
    return (("digits MLP", lambda d: train(mlp(), d, lam=0.0, epochs=epochs), lambda a: a),
            ("token MLP stack", lambda d: train(TokenMLPStack(), (tokens(d[0]), d[1]), lam=0.0, epochs=epochs,
                                                penalised=[]), tokens),
            ("CNN", lambda d: train(resnet(), d, lam=0.0, epochs=round(CNN_EPOCHS * epochs / 60), penalised=[],
                                    weight_decay=WEIGHT_DECAY), lambda a: a))


def alds_study(epochs: int, workdir: Path) -> list[dict]:
    """(b): data-free vs activation-aware ALDS, pooled over the folds of ``cv_splits``."""
    sums: dict[tuple, dict] = {}
    for fold, (train_set, test) in enumerate(cv_splits()):
        for name, fit, layout in alds_models(epochs):
            x_train, x_test = layout(train_set[0]), layout(test[0])
            path, calib = workdir / "alds.onnx", workdir / "alds_calib.npz"
            export_onnx(fit(train_set), torch.from_numpy(x_test[:2]), path)
            np.savez(calib, x=x_train)
            reference = logits(onnx.load(str(path)), x_test)
            for budget in BUDGETS:
                for how, calibrate in (("data-free", None), ("activation-aware", str(calib))):
                    out, report = onnx_collapse.optimize(path, rank_budget=budget, low_rank="all",
                                                         calibrate=calibrate, verify=False)
                    got = logits(out, x_test)
                    acc = sums.setdefault((name, budget, how), {"model": name, "budget": budget, "alds": how,
                                                                "n": 0, "right": 0, "base_right": 0, "worst": 0.0,
                                                                "diff2": 0.0, "ref2": 0.0, "max_layer_error": 0.0})
                    acc["n"] += len(test[1])
                    acc["right"] += int((got.argmax(-1) == test[1]).sum())
                    acc["base_right"] += int((reference.argmax(-1) == test[1]).sum())
                    acc["worst"] = max(acc["worst"], float(np.abs(got - reference).max()))
                    acc["diff2"] += float(np.sum((got - reference) ** 2))
                    acc["ref2"] += float(np.sum(reference ** 2))
                    acc["max_layer_error"] = max([acc["max_layer_error"]] + [f.predicted_error or 0.0
                                                                             for f in report.folds if f.form])
        print(f"fold {fold + 1}/{ALDS_FOLDS} done", flush=True)
    return [{**a, "accuracy": a["right"] / a["n"], "base": a["base_right"] / a["n"],
             "output_error": float(np.sqrt(a["diff2"] / a["ref2"]))} for a in sums.values()]


def _collapse_table(rows: list[dict]) -> list[str]:
    lines = ["| slopes (target) | penalty | penalised slopes | fold | layers folded | params | worst logit error "
             "| mean logit error | test accuracy (uncompressed) | change (points) |", "|---" * 10 + "|"]
    for r in rows:
        change = 100 * (r["accuracy"] - r["base"])
        lines.append(f"| {r['target']} | {r['penalty']:g} | {min(r['slopes']):.3f}..{max(r['slopes']):.3f} "
                     f"| {r['fold']}{'' if r['fold'] == 'plain' or r['calibrated'] else ' (kept plain)'} "
                     f"| {r['folded']} | {r['params'][0]:,} -> {r['params'][1]:,} | {r['worst']:.3f} | {r['mean']:.4f} "
                     f"| {100 * r['accuracy']:.2f}% ({100 * r['base']:.2f}%) | {change:+.2f} |")
    return lines


def _collapse_verdict(rows: list[dict]) -> list[str]:
    out = []
    for plain, cal in zip(rows[::2], rows[1::2]):
        ratio = cal["worst"] / plain["worst"] if plain["worst"] else float("nan")
        lost = 100 * (plain["base"] - plain["accuracy"])
        line = (f"slopes {plain['target']}: calibrated worst logit error = {ratio:.2f} x plain "
                f"(target <= 0.20: {'met' if ratio <= 0.2 else 'NOT met'})")
        if lost >= 2:
            gap = 100 * abs(cal["accuracy"] - cal["base"])
            line += f"; plain loses {lost:.2f} points, calibrated is {gap:.2f} from uncompressed " \
                    f"(target <= 0.5: {'met' if gap <= 0.5 else 'NOT met'})"
        out.append(line)
    return out


def _alds_table(rows: list[dict]) -> list[str]:
    lines = ["| model | budget | ALDS | max layer error (pred.) | output error | worst logit error "
             "| test accuracy, 5 folds pooled (uncompressed) | change (images of 1,797) |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['budget']:.0%} | {r['alds']} | {r['max_layer_error']:.3f} "
                     f"| {r['output_error']:.3f} | {r['worst']:.3f} | {100 * r['accuracy']:.2f}% ({100 * r['base']:.2f}%) "
                     f"| {r['right'] - r['base_right']:+d} |")
    return lines


def _alds_verdict(rows: list[dict]) -> list[str]:
    out = []
    for free, aware in zip(rows[::2], rows[1::2]):
        if free["budget"] != 0.5:
            continue
        lost_free, lost_aware = (100 * (r["base"] - r["accuracy"]) for r in (free, aware))
        met = lost_aware <= max(lost_free, 0) / 2
        out.append(f"{free['model']} at 50%: data-free loses {lost_free:.2f} points, activation-aware "
                   f"{lost_aware:.2f} (target <= half: {'met' if met else 'NOT met'})")
    return out


def run(epochs: int, out_dir: Path) -> None:
    torch.set_num_threads(2)
    train_set, _, test = splits()
    with tempfile.TemporaryDirectory() as tmp:
        collapse = collapse_study(epochs, train_set, test, Path(tmp))
        write_table("calibrated_collapse", _collapse_table(collapse))
        print("\n".join(_collapse_verdict(collapse)) + "\n")
        alds = alds_study(epochs, Path(tmp))
        write_table("calibrated_alds", _alds_table(alds))
        print("\n".join(_alds_verdict(alds)))


def main() -> None:
    study_main(__doc__, run)


if __name__ == "__main__":
    main()
