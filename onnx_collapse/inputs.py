"""What verification feeds the models: random input sets, arrays from .npz files or the caller, checked
against the model's inputs; and the estimate of the memory a verification run needs."""

from __future__ import annotations

import contextlib
import heapq
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import CollapseError, Param, Text
from .graph import infer_shapes
from .io import read_npz

INPUTS, SHAPES, MAX_MEMORY = Param("inputs"), Param("input_shapes"), Param("max_verify_memory")
NO_VERIFY = Param("verify", False)

DEFAULT_DIM = 2  # value used for a dynamic dim the user did not set
SET_BYTES = 256 * 2**20  # the tensors one verification run may hold: further rows of a batch go to further sets


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
                raise CollapseError(SHAPES, f" {info.name}: rank {len(shape)}, but the model's input has "
                                    f"rank {len(dims)}")
            for k, (value, dim) in enumerate(zip(shape, dims)):
                if fixed_dim(dim) is not None and dim.dim_value != value:
                    raise CollapseError(SHAPES, f" {info.name}: dim {k} is fixed to {dim.dim_value} "
                                        f"in the model, not {value}")
        return shape
    if not info.type.tensor_type.HasField("shape"):
        raise CollapseError(f"input {info.name!r} has unknown rank; give its shape with ", SHAPES,
                            f" {info.name}:DxD...")
    return tuple(DEFAULT_DIM if fixed_dim(d) is None else d.dim_value for d in dims)


def planned_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, np.dtype, tuple]]:
    """(name, dtype, shape) of each input that random inputs would have; dynamic dims from ``shapes`` or
    DEFAULT_DIM. CollapseError for names, ranks, dims or types that cannot be generated."""
    inputs = graph_inputs(model)
    known = {i.name for i in inputs}
    for name in shapes:
        if name not in known:
            raise CollapseError(SHAPES, f" names {name!r}, which is not a model input "
                                f"(inputs: {', '.join(sorted(known)) or 'none'})")
    planned = []
    for info in inputs:
        if not info.type.HasField("tensor_type"):
            raise CollapseError(f"input {info.name!r} is not a tensor; verification cannot make values "
                                "for it (use ", NO_VERIFY, ")")
        elem = info.type.tensor_type.elem_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        except (KeyError, TypeError, ValueError):
            raise CollapseError(f"input {info.name!r} has element type {elem}, which verification cannot "
                                "generate (use ", INPUTS, " or ", NO_VERIFY, ")") from None
        if dtype.kind not in "fiub":
            raise CollapseError(f"input {info.name!r} of dtype {dtype} cannot be generated; use ", INPUTS)
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
    arrays = read_npz(path, INPUTS, *memory_limit(max_memory))
    feed, notes = _checked_feed(model, arrays, (INPUTS, f" {str(path)!r}"))
    return [feed], notes


def refuse_non_finite(arrays: Mapping[str, np.ndarray], what: Text) -> None:
    """CollapseError for a float array holding NaN or infinity: NaN compared with NaN proves nothing, and
    such rows would count as agreement (remove them, or replace them with the values the model meets)."""
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind in "fc":
            bad = array.size - int(np.count_nonzero(np.isfinite(array)))
            if bad:
                raise CollapseError(what, f": array {name!r} holds {bad} NaN or infinite value(s); comparisons "
                                    "on them prove nothing, so they are refused: remove those rows")


def _checked_feed(model: onnx.ModelProto, arrays: dict[str, np.ndarray],
                  what: Text) -> tuple[dict[str, np.ndarray], list[str]]:
    """``arrays`` checked against the model's inputs (names, then dtypes: cast when no value changes
    range), and a note per cast."""
    inputs = graph_inputs(model)
    names = {i.name for i in inputs}
    missing = sorted(names - set(arrays))
    if missing:
        raise CollapseError(what, f" has no array for input {missing[0]!r} (it has {', '.join(sorted(arrays)) or 'none'}"
                            f"; {expected_inputs(model)}); save one array per input by name, "
                            f"e.g. np.savez(path, {missing[0]}=...)")
    extra = sorted(set(arrays) - names)
    if extra:
        raise CollapseError(what, f" has array {extra[0]!r}, which is not a model input ({expected_inputs(model)})")
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


def _cast_input(name: str, array: np.ndarray, dtype: np.dtype, what: Text) -> np.ndarray:
    """``array`` as ``dtype``: floats when no finite value overflows, others when every value round-trips."""
    if array.dtype.kind not in "biuf":  # strings, objects, dates: no numbers to cast
        raise CollapseError(what, f": array {name!r} is {array.dtype}, but the model's input is {dtype}; save "
                            f"numbers, e.g. np.savez(path, {name}=a.astype('{dtype}'))")
    with np.errstate(all="ignore"):
        cast = array.astype(dtype)
        if array.dtype.kind == dtype.kind == "f":
            fits = bool(np.array_equal(np.isfinite(cast), np.isfinite(array)))
        else:
            fits = array.dtype.kind in "biuf" and bool(np.array_equal(cast.astype(array.dtype), array))
    if not fits:
        raise CollapseError(what, f": array {name!r} is {array.dtype}, but the model's input is {dtype} and its "
                            f"values do not fit; save it as {dtype}, e.g. np.savez(path, {name}=a.astype('{dtype}'))")
    return cast


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
        sets = [part for feed in random_feeds(model, shapes, seed, count) for part in split_rows(model, feed)]
        if len(sets) > count:
            note += f"; each set's {batch_rows(model, planned)} rows run in sets of up to {_rows_of(sets[0])}"
        return sets, f"random inputs (seed {seed}{note})"
    if isinstance(inputs, Mapping):
        feed, notes = _checked_feed(model, dict(inputs), "inputs")
        feeds, where = [feed], "the given inputs"
    else:
        feeds, notes = file_feeds(model, inputs, max_memory)
        where = f"inputs from {Path(inputs).name}"
    _refuse_empty((name, np.shape(value)) for name, value in feeds[0].items())
    check_shapes(model, feeds[0], INPUTS if isinstance(inputs, Mapping) else (INPUTS, f" {str(inputs)!r}"))
    check_memory(model, _planned_of(feeds[0]), 1, max_memory)
    sets = split_rows(model, feeds[0])
    if len(sets) > 1:
        notes.append(f"its {batch_rows(model, _planned_of(feeds[0]))} rows run in sets of up to {_rows_of(sets[0])}")
    return sets, where + (f" ({'; '.join(notes)})" if notes else "")


def _refuse_empty(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> None:
    """CollapseError for an input with no elements: verification would compare nothing and pass."""
    for name, shape in shapes:
        if 0 in tuple(shape):
            raise CollapseError(f"input {name!r} has no elements (shape {dims_text(shape)}), so verification would "
                                "compare nothing; give it a non-empty shape (", SHAPES, ") or other data (", INPUTS, ")")


def dims_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


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


def memory_limit(limit: int | None) -> tuple[int | None, Text]:
    """The memory limit in bytes (``limit``, else half the available memory; None if that is unknown) and
    the phrase naming where it comes from."""
    if limit is not None:
        return limit, MAX_MEMORY
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
    """A conservative estimate of the memory verification needs for ``count`` input sets of the ``planned``
    shapes: the inputs; per set, the outputs of two models kept for the comparisons (where inference sizes
    every output; else every tensor alive at a run's peak); and one run in progress, on one of the sets of
    rows ``split_rows`` makes (``run_bytes``)."""
    inputs = sum(_nbytes(shape, np.dtype(dtype).itemsize) for _, dtype, shape in planned)
    values, outputs = _run_sizes(model, planned)
    kept = 2 * outputs if outputs is not None else values
    per_set = rows_per_set(model, planned)
    running = values if per_set is None else run_bytes(model, _with_rows(planned, per_set))
    return count * (inputs + kept) + running


def _run_sizes(model: onnx.ModelProto, planned: Sequence[tuple[str, np.dtype, Sequence[int]]]
               ) -> tuple[int, int | None]:
    """The peak bytes of the main-graph tensors alive at once in one run on inputs of the ``planned`` shapes
    (``peak_live_bytes``, over the tensors whose shapes inference finds from them, at the inputs' largest
    item size; 0 when it finds none), and the bytes of the graph's outputs (None when one is not sized)."""
    itemsize = max((np.dtype(dtype).itemsize for _, dtype, _ in planned), default=4)
    shapes = {name: shape for name, _, shape in planned}
    with _inputs_declared_as(model, shapes):
        inferred = infer_shapes(model)
    stored = {t.name for t in model.graph.initializer} | set(shapes)
    sizes = {name: _nbytes(dims, itemsize) for name, dims in inferred.items()
             if name not in stored and dims and None not in dims}
    outputs = [sizes.get(o.name, shapes.get(o.name) and _nbytes(shapes[o.name], itemsize))
               for o in model.graph.output]
    return peak_live_bytes(model.graph, sizes), None if None in outputs else sum(outputs)


def run_bytes(model: onnx.ModelProto, planned: Sequence[tuple[str, np.dtype, Sequence[int]]]) -> int:
    """The peak bytes of the tensors alive at once in one run on inputs of the ``planned`` shapes (see
    ``_run_sizes``)."""
    return _run_sizes(model, planned)[0]


def batch_rows(model: onnx.ModelProto, planned: Sequence[tuple[str, np.dtype, Sequence[int]]]) -> int | None:
    """How many rows inputs of the ``planned`` shapes hold when axis 0 of every model input is one batch
    axis: dynamic in the model (under one name, where inputs name it) and of one length in ``planned``;
    None otherwise."""
    shapes = {name: tuple(shape) for name, _, shape in planned}
    lengths, names = set(), set()
    for info in graph_inputs(model):
        tensor = info.type.tensor_type
        shape = shapes.get(info.name)
        if not shape or not tensor.HasField("shape") or not tensor.shape.dim \
                or fixed_dim(tensor.shape.dim[0]) is not None:
            return None
        lengths.add(shape[0])
        names.add(tensor.shape.dim[0].dim_param or None)
    return lengths.pop() if len(lengths) == 1 and len(names - {None}) <= 1 else None


def rows_per_set(model: onnx.ModelProto, planned: Sequence[tuple[str, np.dtype, Sequence[int]]],
                 limit: int | None = None) -> int | None:
    """How many rows of a batch (``batch_rows``) of the ``planned`` shapes one run may take so that its
    tensors (``run_bytes``) stay within ``limit`` bytes (default ``SET_BYTES``), at least one; None when they
    need no split (no batch axis, all rows fit, or the estimate sizes no tensor)."""
    limit = SET_BYTES if limit is None else limit
    rows = batch_rows(model, planned)
    if rows is None or rows < 2:
        return None
    one = run_bytes(model, _with_rows(planned, 1))
    per_set = max(1, limit // one) if one else rows
    return per_set if per_set < rows else None


def _with_rows(planned, rows: int) -> list[tuple[str, np.dtype, tuple]]:
    return [(name, dtype, (rows, *shape[1:])) for name, dtype, shape in planned]


def _rows_of(feed: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))


def _planned_of(feed: Mapping[str, np.ndarray]) -> list[tuple[str, np.dtype, tuple]]:
    return [(n, np.asarray(v).dtype, np.shape(v)) for n, v in feed.items()]


def split_rows(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], limit: int | None = None
               ) -> list[dict[str, np.ndarray]]:
    """``feed`` as input sets of ``rows_per_set`` rows each (the last one: the rest), or as one set when it
    needs no split. Each set views ``feed``'s arrays (nothing is copied); the comparisons and agreements
    count rows over all sets, so a split changes only the peak memory of a run."""
    planned = _planned_of(feed)
    per_set = rows_per_set(model, planned, limit)
    if per_set is None:
        return [dict(feed)]
    rows = batch_rows(model, planned)
    return [{n: v[start:start + per_set] for n, v in feed.items()} for start in range(0, rows, per_set)]


def peak_live_bytes(graph: onnx.GraphProto, sizes: Mapping[str, int]) -> int:
    """The largest total of ``sizes`` (bytes by tensor name; a tensor not in it counts 0) alive at once
    when ``graph``'s nodes run one at a time in topological order: a tensor lives from the node that
    produces it until its last reader (a node whose subgraph reads it counts as a reader), a graph output
    until the end. A pure function of the graph's structure and the sizes."""
    order = topological_order(graph)
    end = len(order)
    last: dict[str, int] = {}
    for step, node in enumerate(order):
        for name in node_reads(node):
            last[name] = step
    for output in graph.output:
        last[output.name] = end
    change = [0] * (end + 2)
    born: set[str] = set()
    for step, node in enumerate(order):
        for name in node.output:
            if name and name in sizes and name not in born:
                born.add(name)
                change[step] += sizes[name]
                change[max(last.get(name, step), step) + 1] -= sizes[name]
    live = peak = 0
    for delta in change:
        live += delta
        peak = max(peak, live)
    return peak


def node_reads(node: onnx.NodeProto) -> set[str]:
    """The tensors ``node`` reads: its inputs, and every name its subgraphs' nodes read (outer-scope
    tensors among them; local ones too, which can only lengthen a lifetime)."""
    names = {n for n in node.input if n}
    stack = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    stack += [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
    while stack:
        graph = stack.pop()
        names.update(o.name for o in graph.output)
        for inner in graph.node:
            names.update(n for n in inner.input if n)
            stack += [a.g for a in inner.attribute if a.type == onnx.AttributeProto.GRAPH]
            stack += [g for a in inner.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
    return names


def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """``graph``'s nodes in an order where each comes after the producers of what it reads: the stored
    order where it is one already (ONNX requires it), else the earliest ready node first; nodes on a cycle
    (a damaged model) last, in their stored order."""
    nodes = list(graph.node)
    producer = {name: k for k, node in enumerate(nodes) for name in node.output if name}
    waits = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for k, node in enumerate(nodes):
        for j in {producer[n] for n in node_reads(node) if n in producer and producer[n] != k}:
            waits[k] += 1
            readers.setdefault(j, []).append(k)
    ready = [k for k, w in enumerate(waits) if not w]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for r in readers.get(k, ()):
            waits[r] -= 1
            if not waits[r]:
                heapq.heappush(ready, r)
    placed = set(order)
    order += [k for k in range(len(nodes)) if k not in placed]
    return [nodes[k] for k in order]


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
                        f"{name!r} of shape {dims_text(shape)} {np.dtype(dtype).name} and the tensors computed from "
                        f"them), over the limit of {_size_text(limit)} (", why, "); set smaller dims with ", SHAPES,
                        ", give real data with ", INPUTS, ", or raise ", MAX_MEMORY)


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


def check_shapes(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], what: Text, rows: bool = False) -> None:
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
            raise CollapseError(what, f": array {info.name!r} has shape {dims_text(shape)} ({wrong}); "
                                f"{expected_inputs(model)}")
