"""The onnxruntime runner shared by calibration and verification: sessions, runs, and captures of
intermediate tensors."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .errors import CollapseError, one_line
from .graph import proto_subgraphs
from .inputs import graph_inputs
from .io import PROTOBUF_LIMIT, ModelSource, TensorStore, scratch_dir, uses_external, write_model


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
        raise CollapseError(f"onnxruntime cannot load the {what}: {one_line(exc)}") from None


def owned(value):
    """``value`` in memory of its own. onnxruntime's output arrays view its buffers (their base is a capsule):
    holding one keeps the session's whole memory arena alive after the session is gone (PP-OCRv4 rec's
    outputs, 34 MB, held 0.84 GB that way). Sequences and maps are copied element by element."""
    if isinstance(value, np.ndarray):
        return value if value.flags.owndata else value.copy()
    if isinstance(value, list):
        return [owned(v) for v in value]
    if isinstance(value, dict):
        return {k: owned(v) for k, v in value.items()}
    return value


def run(source: ModelSource, feeds: Sequence[Mapping[str, np.ndarray]], what: str, optimized: bool = False
        ) -> list[dict[str, np.ndarray]]:
    """Outputs of the model for each input set, by output name (``optimized``: see ``session``), each in
    memory of its own (``owned``)."""
    return list(iter_outputs(source, feeds, what, optimized))


def iter_outputs(source: ModelSource, feeds: Iterable[Mapping[str, np.ndarray]], what: str,
                 optimized: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """``run``, one input set's outputs at a time: what a comparison set by set needs, so that a model's
    outputs for all the verification rows are never in memory together. The session is made at once."""
    sess = session(source, what, optimized)
    names = [o.name for o in sess.get_outputs()]

    def outputs() -> Iterator[dict[str, np.ndarray]]:
        for feed in feeds:
            try:
                values = sess.run(names, dict(feed))
            except Exception as exc:  # noqa: BLE001
                raise CollapseError(f"onnxruntime cannot run the {what}: {one_line(exc)}") from None
            yield {name: owned(value) for name, value in zip(names, values)}
            del values

    return outputs()


class StoredOutputs(Sequence):
    """A model's outputs for each input set, kept on disk: numeric arrays in .npy files under ``folder``,
    read back one set at a time; other values (sequences, maps, strings) in memory."""

    def __init__(self, folder: Path):
        self.cache = BatchCache(folder)
        self.sets: list[dict] = []  # per set: the values kept in memory, and None for each one on disk

    def append(self, outputs: Mapping[str, object]) -> None:
        b, kept = len(self.sets), {}
        for name, value in outputs.items():
            on_disk = isinstance(value, np.ndarray) and value.dtype.kind in "biufc"
            if on_disk:
                self.cache.put(name, b, value)
            kept[name] = None if on_disk else value
        self.sets.append(kept)

    def extend(self, outputs: Iterable[Mapping[str, object]]) -> StoredOutputs:
        """Append every set of ``outputs``, one at a time; returns self."""
        for values in outputs:
            self.append(values)
        return self

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[k] for k in range(*b.indices(len(self)))]
        b = range(len(self))[b]  # a negative index counts from the end; IndexError beyond it
        return {name: self.cache.get(name, b) if value is None else value for name, value in self.sets[b].items()}


def stored(outputs: Iterable[Mapping[str, object]], folder: Path) -> StoredOutputs:
    """``outputs`` (``iter_outputs``, say) written one set at a time to a new ``StoredOutputs`` in ``folder``;
    outputs stored already are returned as they are."""
    if isinstance(outputs, StoredOutputs):
        return outputs
    return StoredOutputs(folder).extend(outputs)


_RUN: ContextVar[dict | None] = ContextVar("run_scratch", default=None)


@contextlib.contextmanager
def run_scratch() -> Iterator[None]:
    """Within: what several steps of one run compute alike (``shared``: the reference's outputs on the
    verification rows, the original layers' outputs that pruning fits to) is made once and kept on disk, in
    a temporary folder removed with the outermost use. Nested uses share the outermost."""
    if _RUN.get() is not None:
        yield
        return
    with outputs_scratch() as tmp:
        token = _RUN.set({"folder": Path(tmp), "made": {}})
        try:
            yield
        finally:
            _RUN.reset(token)


T = TypeVar("T")


def shared(key: Hashable, make: Callable[[Path], T]) -> T | None:
    """Within ``run_scratch``: the value made for ``key`` by ``make(folder)`` (a fresh folder of its own),
    made the first time only; None outside it."""
    run = _RUN.get()
    if run is None:
        return None
    if key not in run["made"]:
        run["made"][key] = make(run["folder"] / f"shared-{len(run['made'])}")
    return run["made"][key]


def fingerprint(arrays: Iterable[Mapping[str, np.ndarray]]) -> str:
    """A digest of every array of ``arrays`` (sets of named arrays: feeds, calibration rows), by name,
    dtype, shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for named in arrays:
        for name in sorted(named):
            array = np.asarray(named[name])
            digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            digest.update(repr(array.tolist()).encode() if array.dtype.kind == "O" else array.tobytes())
    return digest.hexdigest()


class _Same:
    """A key part that is one object (compared by identity, and kept alive so that its id is not reused)."""

    def __init__(self, thing: object) -> None:
        self.thing = thing

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.thing is self.thing

    def __hash__(self) -> int:
        return id(self.thing)


def model_key(model) -> Hashable:
    """What identifies a model for ``shared``: a file's resolved path, size and time, else the object."""
    if isinstance(model, (str, os.PathLike)):
        info = os.stat(model)
        return os.path.realpath(model), info.st_size, info.st_mtime_ns
    return _Same(model)


def outputs_scratch() -> tempfile.TemporaryDirectory:
    """The temporary folder a run's stored outputs go to (``StoredOutputs``), removed with it."""
    return scratch_dir(Path(tempfile.gettempdir()), "onnx-collapse-expected-")


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


class BatchCache:
    """Tensors of every calibration batch, in .npy files under ``folder`` (made if missing): ``put``/``get`` by
    name and batch."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names: dict[str, str] = {}
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:  # a full disk or a read-only scratch folder: one line
            raise CollapseError(f"cannot write scratch data in {str(folder)!r}: {exc.strerror or exc}") from None

    def _path(self, name: str, batch: int) -> Path:
        key = self.names.setdefault(name, f"t{len(self.names)}")
        return self.folder / f"{key}.{batch}.npy"

    def put(self, name: str, batch: int, value: np.ndarray) -> None:
        try:
            np.save(self._path(name, batch), np.ascontiguousarray(value))
        except OSError as exc:  # a full disk: one line, and the scratch folder goes with the run
            raise CollapseError(f"cannot write scratch data in {str(self.folder)!r}: {exc.strerror or exc}") from None

    def get(self, name: str, batch: int) -> np.ndarray:
        return np.load(self._path(name, batch))

    def __contains__(self, name: str) -> bool:
        return name in self.names


class Probed(NamedTuple):
    """A session of a model that also outputs intermediate tensors (None when all of them are graph inputs),
    and the names of those tensors."""

    session: ort.InferenceSession | None
    names: list[str]


def probed_session(source: ModelSource, names: Sequence[str], elem_types: Mapping[str, int],
                   optimized: bool = True) -> Probed:
    """A session of ``source``'s model that also outputs the tensors ``names`` that are neither graph inputs nor
    initializers (None when there are none), and those names (``optimized``: see ``session``)."""
    graph = source.model.graph
    known = {i.name for i in graph_inputs(source.model)} | {t.name for t in graph.initializer}
    wanted = [n for n in dict.fromkeys(names) if n not in known]
    if not wanted:
        return Probed(None, [])
    probed = ModelSource(probe_model(source.model, wanted, elem_types), source.base_dir, None)
    return Probed(session(probed, "original model", optimized), wanted)


def capture_batches(source: ModelSource, names: Sequence[str], elem_types: Mapping[str, int],
                    batches: Sequence[Mapping[str, np.ndarray]], cache: BatchCache | None, optimized: bool = True,
                    probed: Probed | None = None, keep: Sequence[str] = (), into: StoredOutputs | None = None
                    ) -> list[dict] | StoredOutputs:
    """Run the original model over ``batches``, caching the tensors ``names`` of each batch on disk in ``cache``
    (one batch's in memory at a time): graph inputs as fed, initializers (one that is also an input: as fed,
    else) as stored. Returns, per batch, the values of ``keep`` (the model's outputs, say, which may be
    sequences or maps), held in memory, or appended to ``into`` (and it returned). ``optimized``: see
    ``session``; ``probed``: the ``probed_session`` of ``names`` and ``keep``, if made already."""
    sess, wanted = probed or probed_session(source, [*names, *keep], elem_types, optimized)
    stored = {t.name: t for t in source.model.graph.initializer}
    kept = [] if into is None else into
    for b, feed in enumerate(batches):
        try:
            values = dict(zip(wanted, sess.run(wanted, dict(feed)))) if sess is not None else {}
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise CollapseError(f"onnxruntime cannot run the original model: {one_line(exc)}") from None

        for name in dict.fromkeys([*names, *keep]):
            if name not in values:  # a graph input, or an initializer that is also one
                values[name] = feed[name] if name in feed else TensorStore(source.base_dir).read(stored[name])
        for name in dict.fromkeys(names):
            cache.put(name, b, values[name])
        kept.append({name: owned(values[name]) for name in keep})  # a view would pin the session's arena
        del values  # this batch's tensors go before the next batch runs
    return kept


def chain_model(
    x: str, y: str, nodes: Sequence[onnx.NodeProto], inits: Sequence[onnx.TensorProto], elem_type: int,
    opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int, x_shape: Sequence[int] | None = None,
) -> onnx.ModelProto:
    """A model of just ``nodes``: input ``x`` (of ``x_shape``, or unknown), output ``y``."""
    graph = helper.make_graph(list(nodes), "chain", [helper.make_tensor_value_info(x, elem_type, x_shape)],
                              [helper.make_tensor_value_info(y, elem_type, None)], list(inits))
    return helper.make_model(graph, opset_imports=list(opset_imports), ir_version=ir_version)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The tensors ``node`` reads, those its subgraphs read from outside included."""
    names = list(node.input)
    for sub in proto_subgraphs(node):
        inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | \
            {t.name for t in sub.initializer}
        names += [n for inner_node in sub.node for n in node_reads(inner_node) if n not in inner]
    return names


def needed_nodes(graph: onnx.GraphProto, wanted, given) -> tuple[list[int], set[str]]:
    """Positions (ascending) of the nodes of ``graph`` that compute the tensors ``wanted`` once the tensors in
    ``given`` are known, and the tensors they need from outside (given ones, graph inputs; not initializers)."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    stored = {t.name for t in graph.initializer}
    needed, stack, inputs = set(), list(wanted), set()
    while stack:
        name = stack.pop()
        if not name or name in stored:
            continue
        if name in given or name not in producer:
            inputs.add(name)
            continue
        if producer[name] in needed:
            continue
        needed.add(producer[name])
        stack.extend(node_reads(graph.node[producer[name]]))
    return sorted(needed), inputs


def part_model(model: onnx.ModelProto, kept: Sequence[int], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """A model of the main graph's nodes at positions ``kept`` (in that order) and the initializers they
    read, with ``inputs`` and ``outputs``; opsets and model-local functions as ``model`` has them."""
    graph = model.graph
    part = onnx.ModelProto()
    part.ir_version = model.ir_version
    part.opset_import.extend(model.opset_import)
    part.functions.extend(model.functions)
    part.graph.name = graph.name
    part.graph.node.extend(graph.node[i] for i in kept)
    used = {n for i in kept for n in node_reads(graph.node[i])}
    part.graph.initializer.extend(t for t in graph.initializer if t.name in used)
    part.graph.input.extend(inputs)
    part.graph.output.extend(outputs)
    return part
