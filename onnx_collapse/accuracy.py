"""Accuracy against the true labels (``--labels``) and the drop from the reference's (``--max-drop``).

An agreement with the original model is a proxy: a compressed model that changes some of the original's
wrong answers into right ones, or the other way round, agrees less than it reads. With the true labels of
the verification rows, each model's accuracy is counted unit by unit (a row for ``top1``, a sample for
``sequence`` and ``ctc``, as the agreement metrics count), and a candidate passes when its accuracy is at
most ``max_drop`` below the reference's on the same rows. The two models are read on the same rows, so the
drop is a paired difference: only the units where one model is right and the other wrong move it, and its
upper confidence bound (``drop_upper_bound``) is far tighter than two separate accuracies' would be.

Labels are an .npz with one integer array per labelled model output, rows along axis 0 in the order of the
``--inputs`` rows: for ``top1`` and ``sequence`` the output's shape without its class axis (a negative label
marks a position that does not count), for ``ctc`` ``[samples, length]``, each sample's true classes
followed by negative padding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .errors import CollapseError, Param, Text
from .graph import FLOAT_TENSOR_TYPES
from .inputs import dims_text, memory_limit
from .io import npz_shapes, read_npz

LABELS = Param("labels")
# the metrics that read an output by its argmax over the last axis -> the unit each counts (agreement with the
# reference, or with labels): a row, a sample (every position), a sample's CTC decoding
ARGMAX_METRICS = {"top1": "row", "sequence": "sample", "ctc": "ctc"}


def require_argmax_metric(metric: str) -> None:
    """CollapseError unless ``metric`` reads outputs by argmax (only then do labels say what is right)."""
    if metric not in ARGMAX_METRICS:
        raise CollapseError(LABELS, " are read by argmax: give ", Param("metric"), " top1, sequence or ctc")


def load_labels(data: str | os.PathLike | Mapping[str, np.ndarray], max_memory: int | None = None
                ) -> dict[str, np.ndarray]:
    """The label arrays of ``data`` (an .npz path, read as ``io.read_npz`` reads it, or a dict), each an
    integer array with rows along axis 0; CollapseError naming the file for anything else."""
    if isinstance(data, Mapping):
        arrays, label = {str(k): np.asarray(v) for k, v in data.items()}, LABELS
    else:
        arrays, label = read_npz(data, LABELS, *memory_limit(max_memory)), (LABELS, f" {str(data)!r}")
    if not arrays:
        raise CollapseError(label, " has no array; save one integer array per labelled model output by name, "
                            "e.g. np.savez(path, logits=labels)")
    for name, array in arrays.items():
        if array.dtype.kind not in "iu":
            raise CollapseError(label, f": array {name!r} is {array.dtype}; labels are integer class indices "
                                "(negative where a position does not count)")
        if array.ndim == 0:
            raise CollapseError(label, f": array {name!r} is a scalar; labels have one row per input row")
    return arrays


def run_labels(data: str | os.PathLike | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``load_labels(data)``, read once per run (``runner.run_scratch``) for a file: every verification of a
    search judges by the same labels, however many it makes, and the file is read once."""
    if isinstance(data, Mapping):
        return load_labels(data)
    from .runner import shared  # onnxruntime: not while the command line starts

    labels = shared(("labels", os.path.realpath(data)), lambda _: load_labels(data))
    return load_labels(data) if labels is None else labels


def check_labels_file(model, data: str | os.PathLike | Mapping[str, np.ndarray] | None,
                      inputs: str | os.PathLike | Mapping[str, np.ndarray] | None) -> None:
    """Before any work: CollapseError when the labels ``data`` (if any) cannot be read, name an array that is
    not a float output of ``model`` with a class axis, or have another number of rows than ``inputs``."""
    if data is None:
        return
    labels = run_labels(data)
    check_labels(labels, [o.name for o in model.graph.output])
    for output in model.graph.output:
        tensor = output.type.tensor_type if output.type.HasField("tensor_type") else None
        if output.name in labels and (tensor is None or tensor.elem_type not in FLOAT_TENSOR_TYPES or
                                      (tensor.HasField("shape") and len(tensor.shape.dim) < 2)):
            raise CollapseError(LABELS, f" labels output {output.name!r}, which is not a float tensor of scores "
                                "with rows along axis 0 and classes on the last axis")
    rows = _rows_of(inputs)
    for name, array in labels.items():
        if rows is not None and array.shape[0] != rows:
            raise CollapseError(LABELS, f": array {name!r} has {array.shape[0]} rows, but ", Param("inputs"),
                                f" has {rows} (one label row per row of the inputs, in their order)")


def _rows_of(inputs) -> int | None:
    """The rows (axis 0) of the first array of ``inputs`` (an .npz path, read from its headers only, or a
    dict); None where there is none to read."""
    if isinstance(inputs, Mapping):
        shapes = [np.shape(v) for v in inputs.values()]
    elif inputs is not None:
        shapes = list(npz_shapes(inputs, Param("inputs")).values())
    else:
        return None
    return shapes[0][0] if shapes and shapes[0] else None


def check_labels(labels: Mapping[str, np.ndarray], outputs: Sequence[str], what: Text = LABELS) -> None:
    """CollapseError when ``labels`` names an array that is not one of the model's ``outputs``."""
    for name in labels:
        if name not in outputs:
            raise CollapseError(what, f" has array {name!r}, which is not a model output (outputs: "
                                f"{', '.join(map(repr, outputs))})")


@dataclass(frozen=True)
class Readout:
    """What one input set's array of scores reads, computed once for both the agreement and the accuracy:
    its shape, the argmax over the last axis, whether each row's scores are all finite, and for ``unit``
    "ctc" each sample's CTC decoding (``strip`` classes dropped from both ends)."""

    shape: tuple[int, ...]
    argmax: np.ndarray
    finite: np.ndarray
    decoded: list[list[int]] | None = None


def read_out(output: np.ndarray, unit: str, strip: Sequence[int] = ()) -> Readout:
    """The ``Readout`` of ``output`` (rows along axis 0, classes on the last axis) counted in ``unit``."""
    argmax = np.argmax(output, axis=-1) if output.size else np.zeros(output.shape[:-1], dtype=np.int64)
    decoded = [ctc_decode(path, strip=strip) for path in argmax] if unit == "ctc" and argmax.ndim == 2 else None
    return Readout(output.shape, argmax, np.isfinite(output).all(axis=-1), decoded)


def unit_correct(output: np.ndarray | Readout, labels: np.ndarray, unit: str, strip: Sequence[int] = (),
                 name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Per unit of ``output`` (one input set's array, rows along axis 0, or its ``Readout``): whether its
    argmax reads the true ``labels`` (never where the unit does not count), and whether the unit counts at
    all (it has a label). ``unit`` as in ``compare.agreement_counts``: "row" (every position: argmax equals
    the label), "sample" (every labelled position of the sample right), "ctc" (the CTC decoding, ``strip``
    classes dropped from both ends, equals the sample's labels, negative padding and ``strip`` classes at the
    ends dropped). A unit whose values are not all finite is wrong. CollapseError when the labels' shape does
    not fit the output's."""
    read = output if isinstance(output, Readout) else read_out(output, unit, strip)
    shape = read.shape
    want = shape[:-1] if unit != "ctc" else shape[:1]
    if labels.shape[:len(want)] != want or (unit != "ctc" and labels.shape != want) or \
            (unit == "ctc" and labels.ndim != 2):
        needed = f"[{shape[0]}, length]" if unit == "ctc" else dims_text(want)
        raise CollapseError(LABELS, f": output {name!r} has shape {dims_text(shape)}, so its labels for these "
                            f"rows need shape {needed}, but they have {dims_text(labels.shape)}")
    classes = shape[-1]
    if labels.size and labels.max() >= classes:
        raise CollapseError(LABELS, f": output {name!r} has {classes} classes (0 to {classes - 1}), but its labels "
                            f"hold class {int(labels.max())}: labels of another class list?")
    finite, got = read.finite, read.argmax
    if unit == "row":
        counted = labels >= 0
        return (got == labels) & finite & counted, counted
    if unit == "sample":
        axes = tuple(range(1, labels.ndim))
        counted = labels >= 0
        right = ((got == labels) | ~counted).all(axis=axes) & finite.all(axis=axes)
        counted = counted.any(axis=axes) if axes else counted
        return right & counted, counted
    truth = [strip_ends([c for c in row.tolist() if c >= 0], strip) for row in labels]
    if any(0 in t for t in truth):
        raise CollapseError(LABELS, f": output {name!r}'s labels hold class 0, which a CTC decoding never gives "
                            "(it is the blank); pad with negative values")
    decoded = read.decoded if read.decoded is not None else [ctc_decode(g, strip=strip) for g in got]
    right = np.array([r == t for r, t in zip(decoded, truth)], dtype=bool) & finite.all(axis=1)
    return right, np.ones(len(truth), dtype=bool)


def ctc_decode(labels: np.ndarray, blank: int = 0, strip: Sequence[int] = ()) -> list[int]:
    """A CTC label path read as its output: repeats merged, then the ``blank`` class dropped, then the
    ``strip`` classes (a recogniser's space, say) dropped from both ends."""
    out, last = [], None
    for label in labels.tolist():
        if label != last and label != blank:
            out.append(label)
        last = label
    return strip_ends(out, strip)


def strip_ends(classes: list[int], strip: Sequence[int]) -> list[int]:
    """``classes`` without the ``strip`` classes at either end."""
    start, end = 0, len(classes)
    while start < end and classes[start] in strip:
        start += 1
    while end > start and classes[end - 1] in strip:
        end -= 1
    return classes[start:end]


def drop_upper_bound(worse: int, better: int, total: int, confidence: float) -> float:
    """An upper bound, at ``confidence``, of the accuracy drop from a reference model to a candidate read
    on the same ``total`` units, ``worse`` of them right only for the reference and ``better`` right only
    for the candidate: Agresti and Min's interval for a difference of paired proportions (the Wald interval
    of the difference after half a unit is added to each of the four cells of the pairs' table), never below
    the measured drop. A search that keeps the smallest model passing on its held-out rows keeps, near the
    boundary, the ones that were lucky there; judging the bound undoes that."""
    if not total:
        return 1.0
    z = NormalDist().inv_cdf(confidence)
    n = total + 2
    p_worse, p_better = (worse + 0.5) / n, (better + 0.5) / n
    diff = p_worse - p_better
    spread = z * math.sqrt(max(p_worse + p_better - diff * diff, 0.0) / n)
    return min(1.0, max(diff + spread, (worse - better) / total))
