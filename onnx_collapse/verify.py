"""Numerical equivalence in onnxruntime: input generation, per-output error statistics, tolerance rule."""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .errors import CollapseError
from .graph import infer_shapes
from .io import (
    PROTOBUF_LIMIT,
    ModelSource,
    TensorStore,
    open_model,
    read_npz,
    scratch_dir,
    uses_external,
    write_errors,
    write_model,
)
from .options import DEFAULTS, Options
from .progress import reported, stage
from .report import ErrorStats, Verification

DEFAULT_DIM = 2  # value used for a dynamic dim the user did not set

# (atol, rtol) by dtype: loose enough for float reassociation, tight enough to catch a wrong fold.
TOLERANCES = {
    np.dtype(np.float16): (1e-2, 1e-2),
    np.dtype(np.float32): (1e-4, 1e-3),
    np.dtype(np.float64): (1e-8, 1e-7),
}


def default_tolerance(dtype: np.dtype) -> tuple[float, float]:
    """(atol, rtol) for comparing outputs of ``dtype``; exact for integers and booleans."""
    return TOLERANCES.get(np.dtype(dtype), (0.0, 0.0))


MAX_DIM = 2**63 - 1  # ONNX dims are int64
_SHAPE_TEXT = re.compile(r"^(?P<name>.+):(?P<dims>\d+(x\d+)*)$")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"x:1x128x768"`` -> ``("x", (1, 128, 768))``; CollapseError on bad text."""
    match = _SHAPE_TEXT.match(text.strip())
    if not match:
        raise CollapseError(f"bad --input-shape {text!r}: expected NAME:DxDx... such as x:1x128x768")
    dims = tuple(int(d) for d in match["dims"].split("x"))
    if any(d > MAX_DIM for d in dims):
        raise CollapseError(f"bad --input-shape {text!r}: a dim is over {MAX_DIM} (the largest int64)")
    return match["name"], dims


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller must feed (initializers listed as inputs are not among them)."""
    stored = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in stored]


def fixed_dim(dim) -> int | None:
    """A dim's fixed size, or None when it is dynamic (a name, unset, or a negative value as some exporters
    write, e.g. PaddlePaddle's -1)."""
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _input_shape(info: onnx.ValueInfoProto, given: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    dims = info.type.tensor_type.shape.dim
    if info.name in given:
        shape = given[info.name]
        if info.type.tensor_type.HasField("shape"):
            if len(shape) != len(dims):
                raise CollapseError(f"--input-shape {info.name}: rank {len(shape)}, but the model's input has "
                                    f"rank {len(dims)}")
            for k, (value, dim) in enumerate(zip(shape, dims)):
                if fixed_dim(dim) is not None and dim.dim_value != value:
                    raise CollapseError(f"--input-shape {info.name}: dim {k} is fixed to {dim.dim_value} "
                                        f"in the model, not {value}")
        return shape
    if not info.type.tensor_type.HasField("shape"):
        raise CollapseError(f"input {info.name!r} has unknown rank; give its shape with --input-shape "
                            f"{info.name}:DxD...")
    return tuple(DEFAULT_DIM if fixed_dim(d) is None else d.dim_value for d in dims)


def planned_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, np.dtype, tuple]]:
    """(name, dtype, shape) of each input that random inputs would have; dynamic dims from ``shapes`` or
    DEFAULT_DIM. CollapseError for names, ranks, dims or types that cannot be generated."""
    inputs = graph_inputs(model)
    known = {i.name for i in inputs}
    for name in shapes:
        if name not in known:
            raise CollapseError(f"--input-shape names {name!r}, which is not a model input "
                                f"(inputs: {', '.join(sorted(known)) or 'none'})")
    planned = []
    for info in inputs:
        if not info.type.HasField("tensor_type"):
            raise CollapseError(f"input {info.name!r} is not a tensor; verification cannot make values "
                                "for it (use --no-verify)")
        elem = info.type.tensor_type.elem_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        except (KeyError, TypeError, ValueError):
            raise CollapseError(f"input {info.name!r} has element type {elem}, which verification cannot "
                                "generate (use --inputs or --no-verify)") from None
        if dtype.kind not in "fiub":
            raise CollapseError(f"input {info.name!r} of dtype {dtype} cannot be generated; use --inputs")
        planned.append((info.name, dtype, _input_shape(info, shapes)))
    return planned


def random_feeds(
    model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], seed: int, count: int
) -> list[dict[str, np.ndarray]]:
    """``count`` seeded input sets; dynamic dims from ``shapes`` or DEFAULT_DIM."""
    planned = planned_inputs(model, shapes)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for name, dtype, shape in planned:
            if dtype.kind == "f":
                feed[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind in "iu":
                feed[name] = rng.integers(0, 4, size=shape).astype(dtype)
            else:
                feed[name] = rng.integers(0, 2, size=shape).astype(bool)
        feeds.append(feed)
    return feeds


def file_feeds(model: onnx.ModelProto, path: str | os.PathLike, max_memory: int | None = None
               ) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """One input set from an .npz file with an array per model input, and notes on the casts made. The
    file is read as ``io.read_npz`` reads it, its declared sizes checked against ``max_memory`` first."""
    arrays = read_npz(path, "--inputs", *memory_limit(max_memory))
    feed, notes = _checked_feed(model, arrays, f"--inputs {str(path)!r}")
    return [feed], notes


def refuse_non_finite(arrays: Mapping[str, np.ndarray], what: str) -> None:
    """CollapseError for a float array holding NaN or infinity: NaN compared with NaN proves nothing, and
    such rows would count as agreement (remove them, or replace them with the values the model meets)."""
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind in "fc":
            bad = array.size - int(np.count_nonzero(np.isfinite(array)))
            if bad:
                raise CollapseError(f"{what}: array {name!r} holds {bad} NaN or infinite value(s); comparisons "
                                    "on them prove nothing, so they are refused: remove those rows")


def _checked_feed(model: onnx.ModelProto, arrays: dict[str, np.ndarray],
                  what: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """``arrays`` checked against the model's inputs (names, then dtypes: cast when no value changes
    range), and a note per cast."""
    inputs = graph_inputs(model)
    names = {i.name for i in inputs}
    missing = sorted(names - set(arrays))
    if missing:
        raise CollapseError(f"{what} has no array for input {missing[0]!r} (it has {', '.join(sorted(arrays)) or 'none'}"
                            f"; {expected_inputs(model)}); save one array per input by name, "
                            f"e.g. np.savez(path, {missing[0]}=...)")
    extra = sorted(set(arrays) - names)
    if extra:
        raise CollapseError(f"{what} has array {extra[0]!r}, which is not a model input ({expected_inputs(model)})")
    refuse_non_finite(arrays, what)
    feed, notes = dict(arrays), []
    for info in inputs:
        elem = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        except (KeyError, TypeError, ValueError):
            continue
        array = np.asarray(arrays[info.name])
        if array.dtype != dtype:
            feed[info.name] = _cast_input(info.name, array, dtype, what)
            notes.append(f"{info.name} cast from {array.dtype} to {dtype}")
    return feed, notes


def _cast_input(name: str, array: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """``array`` as ``dtype``: floats when no finite value overflows, others when every value round-trips."""
    with np.errstate(all="ignore"):
        cast = array.astype(dtype)
        if array.dtype.kind == dtype.kind == "f":
            fits = bool(np.array_equal(np.isfinite(cast), np.isfinite(array)))
        else:
            fits = array.dtype.kind in "biuf" and bool(np.array_equal(cast.astype(array.dtype), array))
    if not fits:
        raise CollapseError(f"{what}: array {name!r} is {array.dtype}, but the model's input is {dtype} and its "
                            f"values do not fit; save it as {dtype}, e.g. np.savez(path, {name}=a.astype('{dtype}'))")
    return cast


def session(source: ModelSource, what: str, optimized: bool = False) -> ort.InferenceSession:
    """A CPU session with graph optimizations off, so we compare the graphs as written (``optimized``: on,
    for runs that only measure, such as the output-aware allocation's).

    A model held in a file loads from it; a small in-memory one from bytes; one with external data
    or over 2 GB is first written to a temporary folder (its weights copied there in chunks).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else
                                        ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 4  # fatal only: failures become one CollapseError line, not onnxruntime logs
    # weights in a data file stay mapped from it; prepacking would copy every MatMul/Gemm weight into memory
    # (a few verification rows do not need its speed)
    options.add_session_config_entry("session.disable_prepacking", "1")
    providers = ["CPUExecutionProvider"]
    try:
        if source.path is not None:
            return ort.InferenceSession(str(source.path), options, providers=providers)
        model = source.model
        if not uses_external(model) and model.ByteSize() < PROTOBUF_LIMIT:
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        with scratch_dir(Path(tempfile.gettempdir()), "onnx-collapse-verify-") as tmp:
            path = Path(tmp) / "model.onnx"
            write_model(model, path, True, source.base_dir)
            return ort.InferenceSession(str(path), options, providers=providers)
    except CollapseError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise CollapseError(f"onnxruntime cannot load the {what}: {_one_line(exc)}") from None


def run(source: ModelSource, feeds: Sequence[Mapping[str, np.ndarray]], what: str, optimized: bool = False
        ) -> list[dict[str, np.ndarray]]:
    """Outputs of the model for each input set, by output name (``optimized``: see ``session``)."""
    sess = session(source, what, optimized)
    names = [o.name for o in sess.get_outputs()]
    results = []
    for feed in feeds:
        try:
            values = sess.run(names, dict(feed))
        except Exception as exc:  # noqa: BLE001
            raise CollapseError(f"onnxruntime cannot run the {what}: {_one_line(exc)}") from None
        results.append(dict(zip(names, values)))
    return results


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def compare(
    name: str, expected: Sequence[np.ndarray], actual: Sequence[np.ndarray],
    atol: float | None = None, rtol: float | None = None,
) -> ErrorStats:
    """Error statistics of ``actual`` against ``expected`` over all input sets.

    Passes when every element satisfies |a - e| <= atol + rtol * |e| (NaN matches NaN, inf matches
    the same inf); ``required_atol`` is the smallest atol that would pass at this rtol.
    """
    dtype = np.asarray(expected[0]).dtype
    d_atol, d_rtol = default_tolerance(dtype)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    max_abs = max_rel = required = total = 0.0
    count = 0
    for e, a in zip(expected, actual):
        e = np.asarray(e)
        a = np.asarray(a)
        if e.shape != a.shape:
            return ErrorStats(name, float("inf"), float("inf"), float("inf"), float("inf"), atol, rtol, False)
        if e.dtype.kind in "fc":
            e64, a64 = e.astype(np.float64), a.astype(np.float64)
            with np.errstate(invalid="ignore"):
                diff = np.abs(a64 - e64)
            same = (e64 == a64) | (np.isnan(e64) & np.isnan(a64))
            diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
            mag = np.where(np.isfinite(e64), np.abs(e64), 0.0)
        else:
            diff = (a != e).astype(np.float64)
            mag = np.zeros(diff.shape)
        if diff.size:
            tiny = np.finfo(np.float64).tiny
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(mag, tiny)).max()))
            required = max(required, float((diff - rtol * mag).max()))
            total += float(diff.sum())
            count += diff.size
    mean = total / count if count else 0.0
    required = max(required, 0.0)
    return ErrorStats(name, max_abs, max_rel, mean, required, atol, rtol, required <= atol)


def compared_elements(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> int:
    """How many elements a comparison of ``actual`` with ``expected`` really tests: those whose reference
    value is finite, or that differ from it (NaN matching NaN, or an inf matching itself, proves nothing)."""
    count = 0
    for e, a in zip(expected, actual):
        e, a = np.asarray(e), np.asarray(a)
        if e.shape != a.shape:
            return max(count, 1)  # a mismatch of shapes is a real difference
        if e.dtype.kind not in "fc":
            count += e.size
            continue
        with np.errstate(invalid="ignore"):
            same = (e == a) | (np.isnan(e) & np.isnan(a))
        count += int(np.count_nonzero(np.isfinite(e) | ~same))
    return count


def top1_agreement(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], name: str = "") -> float:
    """Fraction of rows (all axes but the last) whose argmax over the last axis matches; rows whose
    reference holds NaN or infinity do not count. CollapseError for an output without an axis of at least
    two classes (its argmax would always agree) or with no row to compare."""
    same = total = 0
    for e, a in zip(expected, actual):
        e, a = np.asarray(e), np.asarray(a)
        if e.ndim == 0 or e.shape[-1] < 2:
            raise CollapseError(f"--metric top1: output {name!r} has shape {_dims(e.shape)}, so its argmax "
                                "compares nothing; top1 needs a last axis of at least 2 classes (use "
                                "--metric allclose)")
        if e.shape != a.shape or e.size == 0:
            continue
        finite = np.isfinite(e).all(axis=-1)
        hits = (np.argmax(e, axis=-1) == np.argmax(a, axis=-1)) & finite
        same += int(hits.sum())
        total += int(finite.sum())
    if not total:
        raise CollapseError(f"--metric top1: output {name!r} has no row with finite values to compare")
    return same / total


def compare_outputs(
    expected: Sequence[Mapping[str, np.ndarray]], actual: Sequence[Mapping[str, np.ndarray]],
    atol: float | None, rtol: float | None, source: str, metric: str = "allclose", min_agreement: float = 0.99,
) -> Verification:
    """Compare two models' outputs (lists of input sets), output by output.

    ``metric="top1"``: float outputs pass when their argmax over the last axis agrees on at least
    ``min_agreement`` of the rows (error statistics are still reported); other outputs use allclose.
    """
    stats, compared = [], 0
    for name in expected[0]:
        if name not in actual[0]:
            stats.append(_mismatch(name, atol, rtol))
            continue
        exp, act = [e[name] for e in expected], [a[name] for a in actual]
        tensors = all(isinstance(v, np.ndarray) for v in [*exp, *act])
        if not tensors:  # a sequence (or an optional) output: compared item by item
            exp, act = _items(exp), _items(act)
            if exp is None or act is None or [len(e) for e in exp] != [len(a) for a in act]:
                stats.append(_mismatch(name, atol, rtol))
                continue
            exp, act = [v for e in exp for v in e], [v for a in act for v in a]
            if not exp:  # empty sequences or optionals on both sides: nothing to compare, nothing differs
                stats.append(ErrorStats(name, 0.0, 0.0, 0.0, 0.0, atol or 0.0, rtol or 0.0, True))
                continue
        stat = compare(name, exp, act, atol, rtol)
        count = compared_elements(exp, act)
        if stat.passed and not count and sum(np.size(e) for e in exp):
            raise CollapseError(f"output {name!r} compared no element: the original model's values are all "
                                "NaN or infinite, so verification would prove nothing; give inputs on which it "
                                "is finite (--inputs)")
        compared += count
        if metric == "top1" and tensors and np.asarray(exp[0]).dtype.kind == "f":
            stat.agreement = top1_agreement(exp, act, name)
            stat.passed = stat.agreement >= min_agreement
        stats.append(stat)
    if stats and all(s.passed for s in stats) and not compared:
        raise CollapseError("verification compared no element: every output of the original model is empty, "
                            "so it would prove nothing; give inputs that make them non-empty")
    if metric == "top1":
        source += f", metric top-1 agreement >= {100 * min_agreement:g}%"
    return Verification(all(s.passed for s in stats), len(expected), source, stats)


def _mismatch(name: str, atol: float | None, rtol: float | None) -> ErrorStats:
    """The statistics of an output that differs in kind (missing, or a sequence of another length)."""
    inf = float("inf")
    return ErrorStats(name, inf, inf, inf, inf, atol or 0.0, rtol or 0.0, False)


def _items(values: Sequence) -> list[list[np.ndarray]] | None:
    """Each input set's value of a sequence or optional output as a list of arrays (an empty optional: no
    item); None if a value is of another kind."""
    out = []
    for value in values:
        if value is None:
            out.append([])
        elif isinstance(value, np.ndarray):
            out.append([value])
        elif isinstance(value, (list, tuple)) and all(isinstance(v, np.ndarray) for v in value):
            out.append(list(value))
        else:
            return None
    return out


def make_feeds(
    model: onnx.ModelProto, inputs: str | os.PathLike | Mapping[str, np.ndarray] | None,
    shapes: Mapping[str, tuple[int, ...]], seed: int, count: int, max_memory: int | None = None,
) -> tuple[list[dict[str, np.ndarray]], str]:
    """Input sets from a file, from arrays the caller gave, or from a seeded generator; and a phrase
    saying which (and what was cast).

    Refuses inputs with no elements (nothing would be compared) and runs whose estimated memory exceeds
    ``max_memory`` (default: half the available memory), before generating anything.
    """
    if inputs is None:
        planned = planned_inputs(model, shapes)
        _refuse_empty((name, shape) for name, _, shape in planned)
        check_memory(model, planned, count, max_memory)
        defaulted = [f"{i.name}[{k}]" for i in graph_inputs(model) if i.name not in shapes
                     for k, d in enumerate(i.type.tensor_type.shape.dim) if fixed_dim(d) is None]
        note = f"; dynamic dims set to {DEFAULT_DIM}: {', '.join(defaulted)}" if defaulted else ""
        return random_feeds(model, shapes, seed, count), f"random inputs (seed {seed}{note})"
    if isinstance(inputs, Mapping):
        feed, notes = _checked_feed(model, dict(inputs), "inputs")
        feeds, where = [feed], "the given inputs"
    else:
        feeds, notes = file_feeds(model, inputs, max_memory)
        where = f"inputs from {Path(inputs).name}"
    _refuse_empty((name, np.shape(value)) for name, value in feeds[0].items())
    check_shapes(model, feeds[0], "inputs" if isinstance(inputs, Mapping) else f"--inputs {str(inputs)!r}")
    check_memory(model, [(n, np.asarray(v).dtype, np.shape(v)) for n, v in feeds[0].items()], 1, max_memory)
    return feeds, where + (f" ({'; '.join(notes)})" if notes else "")


def _refuse_empty(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> None:
    """CollapseError for an input with no elements: verification would compare nothing and pass."""
    for name, shape in shapes:
        if 0 in tuple(shape):
            raise CollapseError(f"input {name!r} has no elements (shape {_dims(shape)}), so verification would "
                                "compare nothing; give it a non-empty shape (--input-shape) or other data (--inputs)")


def _dims(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


_SIZE_TEXT = re.compile(r"^(?P<number>\d+(\.\d+)?)\s*(?P<unit>[KMGT]?)i?B?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"512M"`` -> 536870912: bytes, with an optional K, M, G or T (powers of 1024); CollapseError on bad text."""
    match = _SIZE_TEXT.match(text.strip())
    if not match:
        raise CollapseError(f"bad size {text!r}: expected a number of bytes with an optional K, M, G or T, "
                            "such as 8G")
    return int(float(match["number"]) * 1024 ** " KMGT".index(match["unit"].upper() or " "))


def available_memory() -> int | None:
    """Memory available to new allocations now (MemAvailable, else free pages); None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def memory_limit(limit: int | None) -> tuple[int | None, str]:
    """The memory limit in bytes (``limit``, else half the available memory; None if that is unknown) and
    the phrase naming where it comes from."""
    if limit is not None:
        return limit, "--max-verify-memory"
    available = available_memory()
    return (None, "") if available is None else (available // 2, "half the available memory")


def _nbytes(shape: Sequence[int], itemsize: int) -> int:
    return math.prod(int(d) for d in shape) * itemsize


@contextlib.contextmanager
def _inputs_declared_as(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> Iterator[None]:
    """Temporarily declare the model's inputs with the concrete ``shapes`` (restored on exit)."""
    saved = {}
    for info in model.graph.input:
        if info.name in shapes and info.type.HasField("tensor_type"):
            saved[info.name] = onnx.ValueInfoProto()
            saved[info.name].CopyFrom(info)
            shape = info.type.tensor_type.shape
            shape.Clear()
            for d in shapes[info.name]:
                shape.dim.add(dim_value=int(d))
    try:
        yield
    finally:
        for info in model.graph.input:
            if info.name in saved:
                info.CopyFrom(saved[info.name])


def verification_bytes(model: onnx.ModelProto, planned: Sequence[tuple[str, np.dtype, Sequence[int]]],
                       count: int) -> int:
    """A conservative estimate of the memory verification needs: ``count`` input sets, and per set every
    main-graph tensor whose shape inference finds from the inputs' shapes (kept once per set for the
    comparisons, plus once for the run in progress), at the inputs' largest item size."""
    inputs = sum(_nbytes(shape, np.dtype(dtype).itemsize) for _, dtype, shape in planned)
    itemsize = max((np.dtype(dtype).itemsize for _, dtype, _ in planned), default=4)
    shapes = {name: shape for name, _, shape in planned}
    with _inputs_declared_as(model, shapes):
        inferred = infer_shapes(model)
    stored = {t.name for t in model.graph.initializer} | set(shapes)
    values = sum(_nbytes(dims, itemsize) for name, dims in inferred.items()
                 if name not in stored and dims and None not in dims)
    return count * (inputs + values) + values


def check_memory(model: onnx.ModelProto, planned: Sequence[tuple[str, np.dtype, Sequence[int]]], count: int,
                 limit: int | None = None) -> None:
    """CollapseError, naming the largest input, if verification would need more than ``limit`` bytes
    (default: half the available memory; no check when that is unknown)."""
    limit, why = memory_limit(limit)
    if limit is None:
        return
    need = verification_bytes(model, planned, count)
    if need <= limit:
        return
    name, dtype, shape = max(planned, key=lambda p: _nbytes(p[2], np.dtype(p[1]).itemsize))
    raise CollapseError(f"verification would need about {_size_text(need)} of memory ({count} set(s) of input "
                        f"{name!r} of shape {_dims(shape)} {np.dtype(dtype).name} and the tensors computed from "
                        f"them), over the limit of {_size_text(limit)} ({why}); set smaller dims with --input-shape, "
                        "give real data with --inputs, or raise --max-verify-memory")


@reported
def verify(
    reference: onnx.ModelProto | str | os.PathLike, candidate: onnx.ModelProto | str | os.PathLike, *,
    inputs: str | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = DEFAULTS.seed, check_n: int = DEFAULTS.check_n, atol: float | None = None,
    rtol: float | None = None, metric: str = DEFAULTS.metric, min_agreement: float = DEFAULTS.min_agreement,
    max_memory: int | None = DEFAULTS.max_verify_memory,
) -> Verification:
    """Run both models (paths or ModelProtos) in onnxruntime on the same inputs and compare every output
    of ``reference`` (``max_memory``: see ``make_feeds``). Bad values raise CollapseError naming the
    keyword (checked as in ``Options``)."""
    Options(seed=seed, check_n=check_n, atol=atol, rtol=rtol, metric=metric, min_agreement=min_agreement,
            max_verify_memory=max_memory)
    with stage("loading the models"):
        ref, cand = open_model(reference), open_model(candidate)
    names = tuple(repr(Path(m).name) if isinstance(m, (str, os.PathLike)) else what
                  for m, what in ((reference, "the reference model"), (candidate, "the candidate model")))
    feeds, source = make_feeds(ref.model, inputs, input_shapes or {}, seed, check_n, max_memory)
    with stage("running the original model"):
        expected = run(ref, feeds, names[0])
    with stage("running the optimized model"):
        actual = run(cand, feeds, names[1])
    result = compare_outputs(expected, actual, atol, rtol, source, metric, min_agreement)
    result.problems = output_mismatches(expected[0], actual[0], names)
    return result


def probe_model(model: onnx.ModelProto, names: Sequence[str], elem_types: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate tensors ``names`` (typed by ``elem_types``
    where given; onnxruntime accepts an untyped output too)."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    present = {o.name for o in probed.graph.output} | {i.name for i in graph_inputs(model)}
    present |= {t.name for t in probed.graph.initializer}
    for name in dict.fromkeys(names):
        if name not in present:
            probed.graph.output.append(helper.make_tensor_value_info(name, elem_types[name], None)
                                       if name in elem_types else onnx.ValueInfoProto(name=name))
    return probed


def capture(
    source: ModelSource, names: Sequence[str], elem_types: Mapping[str, int], feeds: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """Run the original model once, returning its outputs and the intermediate tensors ``names``."""
    probed = ModelSource(probe_model(source.model, names, elem_types), source.base_dir, None)
    captured = run(probed, feeds, "original model")
    stored = {t.name: t for t in source.model.graph.initializer}
    for feed, out in zip(feeds, captured):
        out.update({n: feed[n] for n in names if n in feed})
        for name in names:  # an initializer that is also an input, not fed: its stored value is used
            if name not in out and name in stored:
                out[name] = TensorStore(source.base_dir).read(stored[name])
    return captured


def chain_model(
    x: str, y: str, nodes: Sequence[onnx.NodeProto], inits: Sequence[onnx.TensorProto], elem_type: int,
    opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int, x_shape: Sequence[int] | None = None,
) -> onnx.ModelProto:
    """A model of just ``nodes``: input ``x`` (of ``x_shape``, or unknown), output ``y``."""
    graph = helper.make_graph(list(nodes), "chain", [helper.make_tensor_value_info(x, elem_type, x_shape)],
                              [helper.make_tensor_value_info(y, elem_type, None)], list(inits))
    return helper.make_model(graph, opset_imports=list(opset_imports), ir_version=ir_version)


def local_errors(
    opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int,
    folds: Sequence[tuple[str, str, Sequence[onnx.NodeProto], Sequence[onnx.TensorProto], int]],
    captured: Sequence[Mapping[str, np.ndarray]], atol: float | None, rtol: float | None, workdir: Path,
) -> list[ErrorStats]:
    """Each fold's own error, measured in onnxruntime at the folded chain's output.

    ``folds`` holds (input, output, new nodes, new initializers, elem type) per fold; ``captured`` the
    original model's values of every fold's input and output (see ``capture``). All folds' new nodes run
    side by side in one model (one session), each on its own copy of its captured input, and each output
    is compared with the captured one. The model is saved in ``workdir``, where the data of initializers
    that refer to files lies (large new tensors are parked there, see ``pipeline.park``).
    """
    if not folds:
        return []
    nodes, inits, inputs, outputs = [], [], [], []
    for j, (x, y, fold_nodes, fold_inits, elem_type) in enumerate(folds):
        names = {x: f"onnx_collapse_fold_in_{j}", y: f"onnx_collapse_fold_out_{j}"}
        for node in fold_nodes:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = [names.get(n, n) for n in node.input]
            copy.output[:] = [names.get(n, n) for n in node.output]
            nodes.append(copy)
        inits += fold_inits
        inputs.append(helper.make_tensor_value_info(names[x], elem_type, None))
        outputs.append(helper.make_tensor_value_info(names[y], elem_type, None))
    feeds = [{f"onnx_collapse_fold_in_{j}": c[fold[0]] for j, fold in enumerate(folds)} for c in captured]
    model = helper.make_model(helper.make_graph(nodes, "folds", inputs, outputs, inits),
                              opset_imports=list(opset_imports), ir_version=ir_version)
    path = workdir / "folds.onnx"  # saved beside the parked data its large tensors refer to
    with write_errors(path):
        onnx.save_model(model, str(path))
    got = run(ModelSource(model, workdir, path), feeds, "folded chains")
    return [compare(y, [c[y] for c in captured], [g[f"onnx_collapse_fold_out_{j}"] for g in got], atol, rtol)
            for j, (_, y, *_) in enumerate(folds)]


def describe_input(info: onnx.ValueInfoProto) -> str:
    """A model input as a user would write it: ``x: float32 [batch, 64]``."""
    if not info.type.HasField("tensor_type"):
        return f"{info.name}: not a tensor"
    tensor = info.type.tensor_type
    try:
        dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)))
    except (KeyError, TypeError, ValueError):
        dtype = f"element type {tensor.elem_type}"
    if not tensor.HasField("shape"):
        return f"{info.name}: {dtype}, any shape"
    dims = [str(d.dim_value) if fixed_dim(d) is not None else (d.dim_param or "?") for d in tensor.shape.dim]
    return f"{info.name}: {dtype} [{', '.join(dims)}]"


def expected_inputs(model: onnx.ModelProto) -> str:
    """What the model expects, for an error message: ``the model expects x: float32 [batch, 64]``."""
    inputs = graph_inputs(model)
    return "the model expects " + ("; ".join(describe_input(i) for i in inputs) if inputs else "no inputs")


def check_shapes(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], what: str, rows: bool = False) -> None:
    """CollapseError naming ``what`` (the option) when an array's rank or a fixed dim differs from its
    input's (``rows``: axis 0 holds rows, batched by the caller, so it is not checked)."""
    for info in graph_inputs(model):
        array = arrays.get(info.name)
        tensor = info.type.tensor_type
        if array is None or not info.type.HasField("tensor_type") or not tensor.HasField("shape"):
            continue
        shape, dims = np.shape(array), list(tensor.shape.dim)
        wrong = None
        if len(shape) != len(dims):
            wrong = f"rank {len(shape)}, the input has rank {len(dims)}"
        else:
            for k, (n, d) in enumerate(zip(shape, dims)):
                if not (rows and k == 0) and fixed_dim(d) is not None and n != d.dim_value:
                    wrong = f"dim {k} is {n}, the input's is {d.dim_value}"
                    break
        if wrong:
            raise CollapseError(f"{what}: array {info.name!r} has shape {_dims(shape)} ({wrong}); "
                                f"{expected_inputs(model)}")


def output_mismatches(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray],
                      names: tuple[str, str] = ("the reference", "the candidate")) -> list[str]:
    """Why outputs cannot be compared element by element: missing in one model, or another shape or dtype."""
    problems = []
    for name, e in expected.items():
        if name not in actual:
            problems.append(f"output {name!r} of {names[0]} is not an output of {names[1]}")
            continue
        if isinstance(e, (list, tuple)) or isinstance(actual[name], (list, tuple)):  # sequences: compared item by item
            continue
        e, a = np.asarray(e), np.asarray(actual[name])
        if e.shape != a.shape:
            problems.append(f"output {name!r} has shape {_dims(e.shape)} in {names[0]} but {_dims(a.shape)} in "
                            f"{names[1]}")
        elif e.dtype != a.dtype:
            problems.append(f"output {name!r} is {e.dtype} in {names[0]} but {a.dtype} in {names[1]}")
    return problems
