"""Cost of reverting folds that each pass their own check but together break the model.

    python benchmarks/revert_scaling.py [--chains 50,200,800]

Each model sums N tiny Gemm-PRelu-Gemm chains into one output. Slopes sit just below 1, so every
fold's own error is within the tolerance, but the errors add up at the output and the whole-model
check fails until the worst folds are reverted. Prints N -> seconds of ``optimize`` (in process, one
run each), with the number of whole-model runs and of reverted folds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_IN, HIDDEN = 4, 8
MAX_DEVIATION = 0.01  # largest |1 - slope|: well within the default --slope-tol


def summed_chains(n: int, seed: int = 0) -> tuple[onnx.ModelProto, float]:
    """A model ``y = sum_i fc2_i(prelu_i(fc1_i(x)))`` of ``n`` chains, and an atol (for rtol 0) that
    every fold passes alone but the sum of all folds fails.

    Chains come in pairs whose first weights differ in sign, so the folded (linear) parts cancel and the
    output stays small, while the folds' errors, all of one sign, add up.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((HIDDEN, N_IN)) / np.sqrt(N_IN)
    w2 = rng.standard_normal((N_IN, HIDDEN)) / np.sqrt(HIDDEN)
    slopes = 1.0 - MAX_DEVIATION * rng.uniform(0.2, 1.0, n)
    nodes, inits, outputs = [], [], []
    for i in range(n):
        sign = 1.0 if i % 2 == 0 else -1.0
        inits += [numpy_helper.from_array((sign * w1).astype(np.float32), f"w1_{i}"),
                  numpy_helper.from_array(np.full(HIDDEN, slopes[i], np.float32), f"s_{i}"),
                  numpy_helper.from_array(w2.astype(np.float32), f"w2_{i}")]
        nodes += [helper.make_node("Gemm", ["x", f"w1_{i}"], [f"h_{i}"], transB=1, name=f"fc1_{i}"),
                  helper.make_node("PRelu", [f"h_{i}", f"s_{i}"], [f"a_{i}"], name=f"act_{i}"),
                  helper.make_node("Gemm", [f"a_{i}", f"w2_{i}"], [f"y_{i}"], transB=1, name=f"fc2_{i}")]
        outputs.append(f"y_{i}")
    nodes.append(helper.make_node("Sum", outputs, ["y"], name="sum"))
    graph = helper.make_graph(nodes, "summed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_IN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N_IN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, 1.2 * _largest_fold_error(w1, w2, slopes, seed)


def _largest_fold_error(w1: np.ndarray, w2: np.ndarray, slopes: np.ndarray, seed: int) -> float:
    """The largest error any single fold makes on the verification's random inputs (seed, 3 sets of 2 rows)."""
    from onnx_collapse.inputs import DEFAULT_DIM

    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal((DEFAULT_DIM, N_IN)).astype(np.float32) for _ in range(3)])
    h = x.astype(np.float64) @ w1.T
    worst = 0.0
    for i, s in enumerate(slopes):
        hi = h if i % 2 == 0 else -h
        worst = max(worst, float(np.abs(((1 - s) * np.minimum(hi, 0)) @ w2.T).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", default="50,200,800", help="comma-separated numbers of chains")
    args = parser.parse_args()

    from onnx_collapse import optimize, pipeline

    runs = []
    real_run = pipeline.run

    def counting(source, feeds, what):
        runs.append(what)
        return real_run(source, feeds, what)

    pipeline.run = counting
    for n in (int(c) for c in args.chains.split(",")):
        model, atol = summed_chains(n)
        runs.clear()
        start = time.perf_counter()
        _, report = optimize(model, atol=atol, rtol=0.0)
        seconds = time.perf_counter() - start
        reverted = sum(r.status == "reverted" for r in report.folds)
        print(f"N = {n:4d} -> {seconds:6.2f} s  ({runs.count('optimized model')} whole-model runs, "
              f"{reverted} of {n} folds reverted, verification {'PASSED' if report.verification.passed else 'FAILED'})",
              flush=True)


if __name__ == "__main__":
    main()
