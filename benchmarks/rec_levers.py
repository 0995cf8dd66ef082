"""Levers tried on the PP-OCRv4 recogniser for issue 20 and not kept: each row optimizes in-process with one
experimental change and reads the evaluation lines against their true text.

    python benchmarks/rec_levers.py --budget 0.7 --metric macs                       # the tool as it is
    python benchmarks/rec_levers.py --budget 0.7 --metric macs --ladder-rows 96      # ladder on more rows
    python benchmarks/rec_levers.py --budget 0.7 --metric macs --change kl           # KL as the ladder's measure
    python benchmarks/rec_levers.py --budget 0.7 --metric macs --sequential --downstream  # dense 1x1 convs refitted

Needs ``pip install rapidocr-onnxruntime==1.4.4`` (the model ships in its wheel) and Pillow; data are rendered
offline with the seeds ``real_models.py`` uses (calibration 101, evaluation 303). ``--ladder-rows`` and
``--change`` replace the output-aware allocator's module-level choices (``sensitivity``) for this process
only; ``--downstream`` is a prototype outside the tool: every dense 1x1 convolution (or constant-weight
MatMul) of the written model whose input and output tensors the original also has is refitted in graph
order, by ridge least squares toward its weights (2-fold cross-validated over the lines), to the original's
outputs given the compressed model's inputs, kept where it predicts them better on the held-out half.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import realdata as rd
from onnx import numpy_helper
from real_models import run_batches, session

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def kl_change(expected, actual) -> float:
    """Mean KL divergence (original || compressed) per output position of probability outputs."""
    total, count = 0.0, 0
    for want, got in zip(expected, actual):
        for name, ref in want.items():
            p = np.clip(np.asarray(ref, np.float64), 1e-12, None)
            q = np.asarray(got[name], np.float64)
            if not np.all(np.isfinite(q)):
                return float("inf")
            q = np.clip(q, 1e-12, None)
            total += float(np.sum(p * (np.log(p) - np.log(q))))
            count += p.size // p.shape[-1]
    return total / max(count, 1)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                             for n in names if n not in have)
    return copy.SerializeToString()


def _values(model: onnx.ModelProto, names: list[str], x: np.ndarray, batch: int = 8) -> list[np.ndarray]:
    sess = session(_with_outputs(model, names))
    runs = [sess.run(names, {"x": x[i:i + batch]}) for i in range(0, len(x), batch)]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(names))]


def _rows(node: onnx.NodeProto, value: np.ndarray) -> np.ndarray:
    """(lines, rows per line, features) as the layer reads ``value``."""
    if node.op_type == "Conv":
        strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])
        value = value[:, :, ::strides[0], ::strides[1]]
        return value.transpose(0, 2, 3, 1).reshape(value.shape[0], -1, value.shape[1])
    return value.reshape(value.shape[0], -1, value.shape[-1])


def _sums(x: np.ndarray, y: np.ndarray):
    return x.shape[0], x.sum(0), y.sum(0), x.T @ x, x.T @ y, float(np.sum(y * y))


def _fit(s, prior: np.ndarray, alpha: float, intercept: bool):
    n, sx, sy, xx, xy, _ = s
    if intercept:
        mx, my = sx / n, sy / n
        xx, xy = xx - n * np.outer(mx, mx), xy - n * np.outer(mx, my)
    lam = alpha * np.trace(xx) / xx.shape[0]
    w = np.linalg.solve(xx + lam * np.eye(len(xx)), xy + lam * prior)
    return w, (my - mx @ w) if intercept else None


def _sse(s, w: np.ndarray, b: np.ndarray | None) -> float:
    n, sx, sy, xx, xy, yy = s
    b = np.zeros(w.shape[1]) if b is None else b
    return yy - 2 * np.sum(xy * w) - 2 * sy @ b + np.sum(w * (xx @ w)) + 2 * (sx @ w) @ b + n * b @ b


def refit_downstream(original: onnx.ModelProto, compressed: onnx.ModelProto, calib: np.ndarray) -> tuple[int, int]:
    """Refit ``compressed``'s dense layers in place (see the module docstring); (kept, tried)."""
    known = {o for n in original.graph.node for o in n.output} | {i.name for i in original.graph.input}
    inits = {i.name: i for i in compressed.graph.initializer}
    layers = []
    for node in compressed.graph.node:
        if node.op_type == "Conv" and node.input[1] in inits:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            kernel = numpy_helper.to_array(inits[node.input[1]]).shape[2:]
            if attrs.get("group", 1) != 1 or kernel != (1, 1) or any(attrs.get("pads", [0])):
                continue
        elif not (node.op_type == "MatMul" and node.input[1] in inits):
            continue
        if node.input[0] in known and node.output[0] in known:
            layers.append(node)
    kept = 0
    for node in layers:
        conv = node.op_type == "Conv"
        w_init = inits[node.input[1]]
        stored = numpy_helper.to_array(w_init).astype(np.float64)
        prior = stored[:, :, 0, 0].T if conv else stored
        b_name = node.input[2] if conv and len(node.input) > 2 and node.input[2] in inits else None
        prior_b = None if b_name is None else numpy_helper.to_array(inits[b_name]).astype(np.float64)
        x_new, = _values(compressed, [node.input[0]], calib)
        _, y_old = _values(original, [node.input[0], node.output[0]], calib)
        x_rows = _rows(node, x_new).astype(np.float64)
        y_rows = (_rows(node, y_old) if conv else y_old.reshape(y_old.shape[0], -1, y_old.shape[-1])).astype(np.float64)
        halves = [_sums(x_rows[i::2].reshape(-1, x_rows.shape[-1]), y_rows[i::2].reshape(-1, y_rows.shape[-1]))
                  for i in range(2)]
        baseline = sum(_sse(h, prior, prior_b) for h in halves)
        held = {a: sum(_sse(halves[1 - i], *_fit(halves[i], prior, a, b_name is not None)) for i in range(2))
                for a in ALPHAS}
        alpha = min(held, key=held.get)
        if held[alpha] < baseline:
            w, b = _fit(tuple(p + q for p, q in zip(*halves)), prior, alpha, b_name is not None)
            new = w.T[:, :, None, None] if conv else w
            w_init.CopyFrom(numpy_helper.from_array(new.astype(np.float32), w_init.name))
            if b_name is not None:
                inits[b_name].CopyFrom(numpy_helper.from_array(b.astype(np.float32), b_name))
            kept += 1
        print(f"  {node.name}: held-out error x{held[alpha] / baseline:.3f} (ridge {alpha:g})")
    return kept, len(layers)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=0.7)
    p.add_argument("--metric", default="macs", choices=("macs", "params"))
    p.add_argument("--sequential", action="store_true")
    p.add_argument("--ladder-rows", type=int, default=None, help="calibration rows the ladder is measured on")
    p.add_argument("--change", default="squared", choices=("squared", "kl"), help="the ladder's output measure")
    p.add_argument("--downstream", action="store_true", help="refit the dense layers afterwards (prototype)")
    p.add_argument("--lines", default="96,480", help="calibration,evaluation lines")
    args = p.parse_args(argv)
    from onnx_collapse import optimize, sensitivity

    if args.ladder_rows is not None:
        sensitivity.calibration_feeds.__defaults__ = (args.ladder_rows, sensitivity.BATCH)
    if args.change == "kl":
        sensitivity.output_change = kl_change
    path = rd.model_path(rd.REC_FILE)
    original = onnx.load(path)
    labels = rd.ctc_labels(original)
    n_calib, n_eval = (int(v) for v in args.lines.split(","))
    calib, _ = rd.rec_dataset(labels, n_calib, seed=101)
    x, truth = rd.rec_dataset(labels, n_eval, seed=303)
    start = time.perf_counter()
    model, _ = optimize(path, low_rank="all", calibrate={"x": calib}, allocator="output", sequential=args.sequential,
                        verify=False, rank_budget=args.budget, budget_metric=args.metric)
    seconds = time.perf_counter() - start
    if args.downstream:
        kept, tried = refit_downstream(original, model, calib)
        print(f"downstream refit: {kept} of {tried} dense layers")
    reference = rd.ctc_greedy(run_batches(session(path), "x", x, 8), labels)
    text = rd.ctc_greedy(run_batches(session(model.SerializeToString()), "x", x, 8), labels)
    scores = rd.rec_scores(text, truth, reference)
    weights = rd.count_weights(model)
    macs = rd.measured_macs(model, {"x": x[:1]})["total"]
    print(f"{vars(args)}: weights {weights:,} ({weights / rd.count_weights(original) - 1:+.1%}), "
          f"MACs {macs:,} ({macs / rd.measured_macs(original, {'x': x[:1]})['total'] - 1:+.1%}), "
          f"exact {scores['exact']:.1%}, same decode {scores['same_decode']:.1%}, optimizer {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
