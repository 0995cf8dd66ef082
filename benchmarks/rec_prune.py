"""Channel pruning with least-squares reconstruction on the PP-OCRv4 recogniser (issue 20's next lever, a
prototype outside the tool).

    python benchmarks/rec_prune.py --fraction 0.2            # prune 20 % of every prunable pair's channels
    python benchmarks/rec_prune.py --fraction 0.2 --head 0.5 # and keep the head at half its rank (SVD, weighed)

A *pair* is a dense convolution A whose output channels reach exactly one dense convolution B only through
per-channel operations (elementwise ops with scalar constants, a depthwise convolution): dropping channel c
removes A's output row c, the depthwise filter c and B's input column c, and nothing else changes. Pairs are
pruned in graph order; for each, B's input (the compressed model's own, so earlier pruning is seen) and B's
output in the original model are summed over the calibration lines, channels are removed one at a time by the
least increase in B's least-squares output error (the removed channel's refitted weights' squared norm over
the inverse Gram's diagonal, Optimal Brain Surgeon's rule), and B's remaining columns and bias are refitted
by ridge least squares to the original's output. Needs ``pip install rapidocr-onnxruntime==1.4.4`` and
Pillow; data are rendered with the seeds ``real_models.py`` uses (calibration 101, evaluation 303).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import onnx
import realdata as rd
from onnx import numpy_helper
from real_models import run_batches, session

PER_CHANNEL = {"Mul", "Add", "Sub", "Div", "Clip", "Relu", "HardSigmoid", "HardSwish", "Sigmoid", "Identity"}


@dataclass
class Pair:
    a: onnx.NodeProto          # dense conv whose output channels are pruned
    depthwise: list            # depthwise convs on the way
    b: onnx.NodeProto          # dense conv that reads them
    channels: int


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def channel_pairs(model: onnx.ModelProto) -> list[Pair]:
    """Every dense conv A whose output reaches one dense conv B through per-channel operations only."""
    consts = rd.constants(model)
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}

    def dense(n):
        return n.op_type == "Conv" and _attrs(n).get("group", 1) == 1 and n.input[1] in consts

    pairs = []
    for a in model.graph.node:
        if not dense(a):
            continue
        channels = consts[a.input[1]].dims[0]
        front, region, values, readers, depthwise, ok = [a.output[0]], {}, {a.output[0]}, [], [], True
        while front and ok:
            t = front.pop()
            ok = t not in outputs
            for c in consumers.get(t, []):
                if c.name in region or c in readers:
                    continue
                if dense(c) and c.input[0] == t:
                    readers.append(c)
                    continue
                group = _attrs(c).get("group", 1) if c.op_type == "Conv" else None
                if not (c.op_type in PER_CHANNEL or (group == channels and c.input[0] == t)):
                    ok = False
                    break
                region[c.name] = c
                if c.op_type == "Conv":
                    depthwise.append(c)
                values.update(c.output)
                front.extend(c.output)
        for c in region.values():        # every other input: a scalar constant, a depthwise filter, or inside
            for i in c.input:
                if i and i not in values and not (i in consts and (
                        c.op_type == "Conv" or int(np.prod(consts[i].dims)) == 1)):
                    ok = False
        if ok and len(readers) == 1:
            pairs.append(Pair(a, depthwise, readers[0], channels))
    return pairs


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                             for n in names if n not in have)
    return copy.SerializeToString()


def pair_sums(original, compressed, pair: Pair, calib: np.ndarray, batch: int = 8):
    """Streamed sums of B's input in ``compressed`` (x) against B's output in ``original`` (y)."""
    xs = session(_with_outputs(compressed, [pair.b.input[0]]))
    ys = session(_with_outputs(original, [pair.b.output[0]]))
    n, sx, sy, xx, xy, yy = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    for i in range(0, len(calib), batch):
        feed = {"x": calib[i:i + batch]}
        x, = xs.run([pair.b.input[0]], feed)
        y, = ys.run([pair.b.output[0]], feed)
        x = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]).astype(np.float64)
        y = y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1]).astype(np.float64)
        n += len(x)
        sx, sy = sx + x.sum(0), sy + y.sum(0)
        xx, xy, yy = xx + x.T @ x, xy + x.T @ y, yy + float(np.sum(y * y))
    mx, my = sx / n, sy / n
    return mx, my, xx / n - np.outer(mx, mx), xy / n - np.outer(mx, my), yy / n - float(my @ my)


def backward_path(cov: np.ndarray, cross: np.ndarray, keep: int, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Channels kept after removing, one at a time, the one whose removal least raises the LS error, and the
    error added at each removal (index k: going from C - k to C - k - 1 channels)."""
    g = cov + ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
    alive = np.arange(len(cov))
    h = np.linalg.inv(g)
    added = []
    while len(alive) > keep:
        w = h @ cross[alive]
        cost = np.sum(w * w, axis=1) / np.diag(h)
        j = int(np.argmin(cost))
        added.append(cost[j])
        hj = h[:, j]
        h = h - np.outer(hj, hj) / hj[j]
        h = np.delete(np.delete(h, j, 0), j, 1)
        alive = np.delete(alive, j)
    return alive, np.array(added)


def plan(original: onnx.ModelProto, pairs: list[Pair], calib: np.ndarray, mac_share: float, ridge: float,
         feed: np.ndarray) -> dict[str, int]:
    """Channels each pair keeps: one pass over the original model gives each pair's error path (relative
    LS error of B's output against channels kept); the largest relative error is minimised (bisection on a
    common error level) so that the model's MACs come to ``mac_share`` of the original's."""
    layer_macs = {d["name"]: d["macs"] for d in rd.measured_macs(original, {"x": feed})["layers"]}
    total = sum(layer_macs.values())
    paths = {}
    for pair in pairs:
        *_, cov, cross, var = pair_sums(original, original, pair, calib)
        _, added = backward_path(cov, cross, 1, ridge)
        paths[pair.b.name] = np.concatenate([[0.0], np.cumsum(added)]) / max(var, 1e-30)  # index: removed

    def keeps_at(level):
        return {p.b.name: p.channels - int(np.searchsorted(paths[p.b.name], level, side="right") - 1)
                for p in pairs}

    def macs(keeps):
        frac_in, frac_out = {}, {}
        for p in pairs:
            f = keeps[p.b.name] / p.channels
            frac_out[p.a.name] = f
            frac_in[p.b.name] = frac_in.get(p.b.name, 1.0) * f
            for d in p.depthwise:
                frac_in[d.name] = f
        return sum(m * frac_in.get(n, 1.0) * frac_out.get(n, 1.0) for n, m in layer_macs.items())

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs(keeps_at(mid)) <= mac_share * total else (mid, hi)
    keeps = keeps_at(hi)
    print(f"  level {hi:.4g}: predicted MACs {macs(keeps) / total:.3f} of the original", flush=True)
    return keeps


LADDER = (0.25, 0.5, 0.75)  # shares of a pair's channels removed when its output change is measured alone
GRID = np.linspace(0, 0.75, 13)


def output_plan(original: onnx.ModelProto, pairs: list[Pair], calib: np.ndarray, mac_share: float,
                ridge: float, feed: np.ndarray, rows: int) -> dict[str, int]:
    """Channels each pair keeps, output-aware: each pair pruned alone at the LADDER shares, the relative
    change of the model's output on ``rows`` calibration lines measured, interpolated on GRID, and the summed
    predicted change minimised (Lagrangian over a MAC price, bisected to the budget)."""
    from onnx_collapse.sensitivity import output_change
    layer_macs = {d["name"]: d["macs"] for d in rd.measured_macs(original, {"x": feed})["layers"]}
    total = sum(layer_macs.values())
    probe = calib[:rows]
    want = [{"y": run_batches(session(original.SerializeToString()), "x", probe, 8)}]
    curves = {}
    for p in pairs:
        changes = [0.0]
        for share in LADDER:
            alone = prune(original, {p.b.name: max(1, int(round(p.channels * (1 - share))))}, calib, ridge,
                          quiet=True)
            got = [{"y": run_batches(session(alone.SerializeToString()), "x", probe, 8)}]
            changes.append(output_change(want, got))
        curves[p.b.name] = np.interp(GRID, (0.0, *LADDER), changes)
        print(f"  {p.b.name}: output change at {LADDER}: {[f'{c:.4f}' for c in changes[1:]]}", flush=True)

    def macs(shares):
        frac_in, frac_out = {}, {}
        for p in pairs:
            f = 1 - shares[p.b.name]
            frac_out[p.a.name] = f
            frac_in[p.b.name] = frac_in.get(p.b.name, 1.0) * f
            for d in p.depthwise:
                frac_in[d.name] = f
        return sum(m * frac_in.get(n, 1.0) * frac_out.get(n, 1.0) for n, m in layer_macs.items())

    linear = {}
    for p in pairs:    # MACs one removed share saves, counting each neighbour dense
        one = {q.b.name: 0.0 for q in pairs}
        one[p.b.name] = 1.0
        linear[p.b.name] = total - macs(one)

    def shares_at(price):
        return {p.b.name: float(GRID[np.argmin(curves[p.b.name] - price * linear[p.b.name] / total * GRID)])
                for p in pairs}

    lo, hi = 0.0, 1e3
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs(shares_at(mid)) <= mac_share * total else (mid, hi)
    shares = shares_at(hi)
    print(f"  price {hi:.4g}: predicted MACs {macs(shares) / total:.3f} of the original, predicted change "
          f"{sum(np.interp(shares[k], GRID, curves[k]) for k in curves):.4f}", flush=True)
    return {p.b.name: max(1, int(round(p.channels * (1 - shares[p.b.name])))) for p in pairs}


def prune(original: onnx.ModelProto, keeps: dict[str, int], calib: np.ndarray, ridge: float,
          quiet: bool = False) -> onnx.ModelProto:
    """Prune each pair to ``keeps[B]`` channels in graph order, refitting B on the compressed model's inputs."""
    model = onnx.ModelProto()
    model.CopyFrom(original)
    inits = rd.constants(model)
    nodes = {n.name: n for n in model.graph.node}

    def get(name):
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    def put(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), inits[name].name))

    for pair in channel_pairs(original):
        keep = keeps.get(pair.b.name, pair.channels)
        if keep >= pair.channels:
            continue
        mx, my, cov, cross, var = pair_sums(original, model, pair, calib)
        alive = np.sort(backward_path(cov, cross, keep, ridge)[0])
        g = cov[np.ix_(alive, alive)]
        g = g + ridge * np.trace(g) / len(g) * np.eye(len(g))
        w = np.linalg.solve(g, cross[alive])                     # (kept, out)
        bias = my - mx[alive] @ w
        residual = (var - float(np.sum(w * cross[alive]))) / max(var, 1e-30)
        put(pair.b.input[1], w.T[:, :, None, None])
        if len(pair.b.input) > 2:
            put(pair.b.input[2], bias)
        else:
            name = pair.b.name + "_bias"
            model.graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), name))
            inits[name] = model.graph.initializer[-1]
            nodes[pair.b.name].input.append(name)
        put(pair.a.input[1], get(pair.a.input[1])[alive])
        if len(pair.a.input) > 2:
            put(pair.a.input[2], get(pair.a.input[2])[alive])
        for d in pair.depthwise:
            put(d.input[1], get(d.input[1])[alive])
            if len(d.input) > 2:
                put(d.input[2], get(d.input[2])[alive])
            node = nodes[d.name]
            for a in node.attribute:
                if a.name == "group":
                    a.i = len(alive)
        if not quiet:
            print(f"  {pair.a.name} -> {pair.b.name}: {pair.channels} -> {len(alive)} channels, "
                  f"relative LS error of {pair.b.name} {residual:.4f}", flush=True)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fraction", type=float, default=None, help="share of each pair's channels removed")
    p.add_argument("--macs", type=float, default=None, help="MACs kept (share of the original's), minimax allocation")
    p.add_argument("--allocate", default="minimax", choices=("minimax", "output"))
    p.add_argument("--ladder-rows", type=int, default=32)
    p.add_argument("--skip", default="", help="comma-separated B convs whose pairs are left whole")
    p.add_argument("--then-budget", type=float, default=None,
                   help="then the tool's calibrated output-aware low-rank pass at this weight budget")
    p.add_argument("--ridge", type=float, default=1e-4)
    p.add_argument("--lines", default="96,480", help="calibration,evaluation lines")
    args = p.parse_args(argv)
    path = rd.model_path(rd.REC_FILE)
    original = onnx.load(path)
    labels = rd.ctc_labels(original)
    n_calib, n_eval = (int(v) for v in args.lines.split(","))
    calib, _ = rd.rec_dataset(labels, n_calib, seed=101)
    x, truth = rd.rec_dataset(labels, n_eval, seed=303)
    print("pairs:", [(q.a.name, q.b.name, q.channels, len(q.depthwise)) for q in channel_pairs(original)])
    start = time.perf_counter()
    pairs = channel_pairs(original)
    if args.macs is not None:
        keeps = (plan(original, pairs, calib, args.macs, args.ridge, x[:1]) if args.allocate == "minimax" else
                 output_plan(original, pairs, calib, args.macs, args.ridge, x[:1], args.ladder_rows))
    else:
        keeps = {q.b.name: max(1, int(round(q.channels * (1 - (args.fraction or 0.0))))) for q in pairs}
    for name in filter(None, args.skip.split(",")):
        keeps.pop(name)
    model = prune(original, keeps, calib, args.ridge)
    if args.then_budget is not None:
        import tempfile

        from onnx_collapse import optimize
        with tempfile.TemporaryDirectory() as tmp:
            pruned = f"{tmp}/pruned.onnx"
            onnx.save(model, pruned)
            model, _ = optimize(pruned, low_rank="all", calibrate={"x": calib}, allocator="output", verify=False,
                                rank_budget=args.then_budget, budget_metric="params")
    seconds = time.perf_counter() - start
    reference = rd.ctc_greedy(run_batches(session(path), "x", x, 8), labels)
    text = rd.ctc_greedy(run_batches(session(model.SerializeToString()), "x", x, 8), labels)
    scores = rd.rec_scores(text, truth, reference)
    ref_scores = rd.rec_scores(reference, truth)
    weights = rd.count_weights(model)
    macs = rd.measured_macs(model, {"x": x[:1]})["total"]
    print(f"{vars(args)}: weights {weights:,} ({weights / rd.count_weights(original) - 1:+.1%}), "
          f"MACs {macs:,} ({macs / rd.measured_macs(original, {'x': x[:1]})['total'] - 1:+.1%}), "
          f"exact {scores['exact']:.1%} (original {ref_scores['exact']:.1%}), "
          f"same decode {scores['same_decode']:.1%}, {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
