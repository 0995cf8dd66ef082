"""Run the optimizer over every model-with-reference-data the installed onnx package ships.

    python benchmarks/corpus.py

Sources: the backend node test cases (``onnx.backend.test.case.node.collect_testcases``) and the model
folders under ``onnx/backend/test/data`` (model.onnx plus test_data_set_*/input_*.pb, output_*.pb).
For each case onnxruntime can run: ``optimize`` with verification on the case's own inputs, then the
optimized model runs in onnxruntime and must match both the original model's outputs and, where the
original matched them, the reference outputs. Prints one summary line.
"""

from __future__ import annotations

import glob
import os
import re
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnx_collapse import CollapseError, optimize
from onnx_collapse.compare import compare
from onnx_collapse.inputs import graph_inputs


@dataclass
class Summary:
    run: int = 0
    folded: int = 0
    unchanged: int = 0
    mismatches: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # clean CollapseErrors on models onnxruntime runs
    skipped: Counter = field(default_factory=Counter)

    def line(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return (f"corpus: {self.run} run, {self.folded} folded, {self.unchanged} unchanged, "
                f"{len(self.mismatches)} mismatches, {len(self.crashes)} crashes, {len(self.errors)} clean errors; "
                f"skipped {sum(self.skipped.values())} ({skipped or 'none'})")


def cases():
    """(name, model, inputs, reference outputs, rtol, atol) for every shipped case."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in collect_testcases(None):
            for inputs, outputs in case.data_sets or []:
                yield case.name, case.model, list(inputs), list(outputs), case.rtol, case.atol
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    for model_path in sorted(glob.glob(str(root / "**" / "model.onnx"), recursive=True)):
        folder = Path(model_path).parent
        model = onnx.load(model_path)
        for data_set in sorted(folder.glob("test_data_set_*")):
            yield (f"{folder.parent.name}/{folder.name}", model, _load_set(data_set, "input"),
                   _load_set(data_set, "output"), 1e-3, 1e-7)


def _load_set(folder: Path, kind: str) -> list[onnx.TensorProto]:
    """input_0.pb, input_1.pb, ... (or output_*) in numeric order."""
    paths = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    return [onnx.load_tensor(str(p)) for p in paths]


def _ort(model: onnx.ModelProto, feed: dict):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for key, label in (("NOT_IMPLEMENTED", "op not implemented in onnxruntime"),
                       ("is not a registered function/op", "op not registered in onnxruntime"),
                       ("MLDataType", "dtype not supported by onnxruntime's Python API"),
                       ("No corresponding Numpy type", "dtype not supported by onnxruntime's Python API"),
                       ("Exception during initialization", "onnxruntime failed to initialize the session"),
                       ("Non-zero status code returned while running", "onnxruntime failed while running"),
                       ("opset", "opset not supported by onnxruntime"),
                       ("Type Error", "type not supported by onnxruntime"),
                       ("INVALID_GRAPH", "graph rejected by onnxruntime"),
                       ("INVALID_ARGUMENT", "input rejected by onnxruntime")):
        if key in text:
            return label
    return "onnxruntime failed: " + type(exc).__name__


def _tensor(value) -> np.ndarray | None:
    """A reference value as an array; None for sequences, optionals and types numpy cannot hold."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, onnx.TensorProto):
        try:
            array = numpy_helper.to_array(value)
        except Exception:  # noqa: BLE001 - float8 and similar have no numpy type here
            return None
        return array if array.dtype.kind in "biufc" else None
    return None


def check(summary: Summary, name: str, model, inputs, outputs, rtol: float, atol: float) -> None:
    inputs, outputs = [_tensor(a) for a in inputs], [_tensor(a) for a in outputs]
    if any(a is None for a in inputs + outputs):
        summary.skipped["sequence, optional or exotic-typed data"] += 1
        return
    feed = {info.name: value for info, value in zip(graph_inputs(model), inputs)}
    try:
        original = _ort(model, feed)
    except Exception as exc:  # noqa: BLE001
        summary.skipped[_reason(exc)] += 1
        return
    summary.run += 1
    try:
        out, report = optimize(model, inputs=feed)
    except CollapseError as exc:
        summary.errors.append(f"{name}: {exc}")
        return
    except Exception:  # noqa: BLE001 - a crash is what this corpus is here to find
        summary.crashes.append(f"{name}: {traceback.format_exc(limit=3)}")
        return
    if report.folded:
        summary.folded += 1
    else:
        summary.unchanged += 1
        if out.SerializeToString() != model.SerializeToString():
            summary.mismatches.append(f"{name}: nothing folded but the model changed")
            return
    optimized = _ort(out, feed)
    for k, (orig, new, ref) in enumerate(zip(original, optimized, outputs)):
        if not compare(str(k), [orig], [new]).passed:
            summary.mismatches.append(f"{name}: output {k} differs from the original model's")
        elif compare(str(k), [ref], [orig], atol, rtol).passed and not compare(str(k), [ref], [new], atol, rtol).passed:
            summary.mismatches.append(f"{name}: output {k} no longer matches the reference")


def run_corpus() -> Summary:
    summary = Summary()
    os.environ.setdefault("ORT_LOGGING_LEVEL", "4")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for case in cases():
            check(summary, *case)
    return summary


if __name__ == "__main__":
    result = run_corpus()
    for problem in result.crashes + result.mismatches + result.errors:
        print(problem)
    print(result.line())
