"""Loading and saving models: lazy external data, atomic writes, streaming copies of untouched weights.

A model is loaded without its external data: tensors stored in ``.data`` files stay on disk and are
read one at a time when a pass needs their values (``TensorStore``). Saving copies untouched external
tensors from the source file to the output's own data file in chunks, so memory stays near the size
of the weights actually changed.

Writing an output (``StagedOutput``) never replaces or removes the input model's files, and the output is
the old one or the complete new one whatever instant the process dies: the model and its data are written
into a hidden staging folder beside the output; the data file, under a fresh name ``OUT.<12 hex>.data``
that no other file has, is moved into the output's folder; one ``os.replace`` of the model then commits;
last, the previous output's own data files (``OUT.<hex>.data``, the names this tool writes; an ``OUT.data``
another tool wrote may be other models' too, and stays) that the new model does not use and the input does
not read are removed, and so is an ``OUT.<hex>.data`` no model uses that was moved in
a minute ago or more (a run killed between its two renames). The renames run with SIGINT, SIGTERM and SIGHUP
deferred (``signals.signals_deferred``), and a run's report (``StagedText``, written in full first) is put in
place with them. Staging folders carry the host and process id, so one that a killed run left behind is
removed by the next run in that folder once it is a minute old.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .errors import CollapseError, Param, Text, one_line
from .signals import signals_deferred

PROTOBUF_LIMIT = 2**31 - 1
# Above this size a model is written with external data even when not asked to.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
ALIGN_LARGE, ALIGN_SMALL = 4096, 64  # tensor offsets in a written data file: pages for tensors >= 1 MiB
CHUNK = 64 * 2**20
OPEN_SOURCES = 16  # source data files kept open at once while copying (a model may name thousands)
STAGING_PREFIX = ".onnx-collapse-"
STALE_AFTER = 60  # seconds: a dead run's scratch folder older than this is removed by the next run
HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"
_NUMBER = re.compile(r"[0-9]{1,18}")


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers, tensor attributes (model-local functions' too) and sparse
    tensors' values and indices, subgraphs included. Dense ones come in the order onnx's own external-data
    helpers visit them: every initializer (each graph's before its nodes' subgraphs'), then every tensor
    attribute."""
    yield from _initializers(model.graph)
    for graph in (model.graph, *model.functions):
        yield from _attribute_tensors(graph)
    for sparse in _sparse_tensors(model.graph):
        yield sparse.values
        yield sparse.indices


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    return list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []


def _initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                yield from _initializers(sub)


def _attribute_tensors(graph: onnx.GraphProto | onnx.FunctionProto) -> Iterator[onnx.TensorProto]:
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in _subgraphs(attr):
                yield from _attribute_tensors(sub)


def _sparse_tensors(graph: onnx.GraphProto) -> Iterator[onnx.SparseTensorProto]:
    """Sparse initializers and sparse tensor attributes of ``graph`` and its subgraphs."""
    yield from graph.sparse_initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor
            yield from attr.sparse_tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _sparse_tensors(sub)


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in all_tensors(model) if uses_external_data(t)]


class TensorStore:
    """Reads tensor values on demand; external data is resolved under ``base_dir`` (the model's folder)."""

    def __init__(self, base_dir: str | os.PathLike | None):
        self.base_dir = None if base_dir is None else Path(base_dir)

    def read(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The tensor's value; CollapseError naming the tensor if its data is malformed."""
        try:
            return self._read(tensor)
        except CollapseError:
            raise
        except (ValueError, KeyError, TypeError, OSError, RuntimeError) as exc:
            raise CollapseError(f"tensor {tensor.name!r} cannot be read: {_first_line(exc)}") from None

    def _read(self, tensor: onnx.TensorProto) -> np.ndarray:
        if not uses_external_data(tensor):
            return numpy_helper.to_array(tensor)
        if self.base_dir is None:
            raise CollapseError(f"tensor {tensor.name!r} uses external data, but the model's folder is unknown")
        mapped = self._map(tensor)
        if mapped is not None:
            return mapped
        detached = onnx.TensorProto()
        detached.CopyFrom(tensor)  # to_array loads external data into the proto it is given: not ours
        return numpy_helper.to_array(detached, base_dir=str(self.base_dir))

    def _map(self, tensor: onnx.TensorProto) -> np.ndarray | None:
        """A read-only memory map of an external float tensor (pages are read only when touched)."""
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
        except (KeyError, TypeError, ValueError):
            return None
        if dtype.kind != "f":
            return None
        info = ExternalDataInfo(tensor)
        shape = tuple(tensor.dims)
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0 or (info.length and info.length != count * dtype.itemsize):
            return None
        return np.memmap(self.base_dir / info.location, dtype=dtype, mode="r", offset=info.offset or 0, shape=shape)

    @staticmethod
    def nbytes(tensor: onnx.TensorProto) -> int:
        """Bytes of the tensor's data, wherever it is stored."""
        if uses_external_data(tensor):
            return int(ExternalDataInfo(tensor).length or dense_bytes(tensor))
        return len(tensor.raw_data) if tensor.HasField("raw_data") else dense_bytes(tensor)


def dense_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data as its dims and type give them. Unlike ``len(tensor.raw_data)`` this never
    copies the data (protobuf's accessor returns a copy)."""
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _external_fields(tensor: onnx.TensorProto, path: Path) -> tuple[str, int, int]:
    """Location, offset and length of an external tensor; CollapseError naming the model if one is malformed."""
    fields = {e.key: e.value for e in tensor.external_data}
    location = fields.get("location", "")
    if "\0" in location or len(location) > 4096:
        raise CollapseError(f"{str(path)!r}: tensor {tensor.name!r} has a bad external data location "
                            f"{location[:60]!r}")
    numbers = {}
    for key in ("offset", "length"):
        value = fields.get(key)
        if value is not None and not _NUMBER.fullmatch(value):
            raise CollapseError(f"{str(path)!r}: tensor {tensor.name!r} has a bad external data {key} "
                                f"{value[:40]!r} (not an integer from 0 to 10**18)")
        numbers[key] = None if value is None else int(value)
    length = dense_bytes(tensor) if numbers["length"] is None else numbers["length"]
    return location, numbers["offset"] or 0, length


def _check_external_paths(model: onnx.ModelProto, path: Path) -> None:
    """Refuse external data that is malformed, points outside the model's folder, is missing or too short."""
    for sparse in _sparse_tensors(model.graph):
        if uses_external_data(sparse.values) or uses_external_data(sparse.indices):
            raise CollapseError(f"{str(path)!r}: sparse initializer {sparse.values.name!r} keeps its values or "
                                "indices in external data, which onnx.checker cannot read; embed them")
    root = path.parent.resolve()
    for tensor in external_tensors(model):
        location, offset, length = _external_fields(tensor, path)
        try:
            target = (root / location).resolve()
            if not location or os.path.isabs(location) or not target.is_relative_to(root):
                raise CollapseError(f"external data path {location!r} of tensor {tensor.name!r} escapes the "
                                    f"model's folder {str(root)!r}")
            if not target.is_file():
                raise CollapseError(f"external data file {str(target)!r} (tensor {tensor.name!r}) is missing")
            if offset + length > target.stat().st_size:
                raise CollapseError(f"external data file {str(target)!r} is too short for tensor {tensor.name!r}")
        except OSError as exc:
            raise CollapseError(f"{str(path)!r}: external data {location[:60]!r} of tensor {tensor.name!r} "
                                f"cannot be read ({exc.strerror or exc})") from None


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX model; external data stays on disk (read lazily via TensorStore)."""
    path = Path(path)
    if not path.exists():
        raise CollapseError(f"{str(path)!r}: no such file")
    if not path.is_file():
        raise CollapseError(f"{str(path)!r}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        raise CollapseError(f"{str(path)!r} is not a valid ONNX model ({_first_line(exc)})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise CollapseError(f"{str(path)!r} is not a valid ONNX model (no graph or no opset)")
    _check_names(model, path)
    _check_external_paths(model, path)
    check_model(path)
    return model


def _check_text(message) -> None:
    """Every string field must be UTF-8 text (protobuf decodes lazily, so a bad one fails only when read)."""
    for desc, value in message.ListFields():
        items = value if isinstance(value, MutableSequence) else [value]
        if desc.type == desc.TYPE_STRING:
            if any(isinstance(v, bytes) for v in items):
                raise UnicodeDecodeError("utf-8", b"", 0, 1, f"field {desc.name}")
        elif desc.type == desc.TYPE_MESSAGE:
            for item in items:
                _check_text(item)


def _check_names(model: onnx.ModelProto, path: Path) -> None:
    try:
        _check_text(model)
    except UnicodeDecodeError:
        raise CollapseError(f"{str(path)!r} is not a valid ONNX model (a name or text field is not UTF-8)") from None


def embed_external_data(model: onnx.ModelProto, base_dir: str | os.PathLike) -> None:
    """Read every external tensor into the model (for callers that want a self-contained ModelProto)."""
    total = sum(TensorStore.nbytes(t) for t in external_tensors(model)) + model.ByteSize()
    if total > PROTOBUF_LIMIT:
        raise CollapseError(f"the model holds {total / 2**30:.1f} GiB of weights, more than one protobuf can; "
                            "write it to a file instead (optimize(..., output=PATH))")
    onnx.external_data_helper.load_external_data_for_model(model, str(base_dir))


def check_model(path: str | os.PathLike) -> None:
    """Run onnx.checker on a model file (external data is checked for presence, not read)."""
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError,
            OSError) as exc:
        raise CollapseError(f"{str(path)!r} fails onnx.checker: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a model file plus the external data files it references."""
    return sum(p.stat().st_size for p in model_files(Path(path), "") if _is_file(p))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def referenced_files(model: onnx.ModelProto, folder: Path) -> set[Path]:
    """The data files the model's external tensors name, under ``folder`` (malformed names are skipped)."""
    found = set()
    for tensor in external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if location and "\0" not in location and not os.path.isabs(location):
            found.add(folder / location)
    return found


def _labelled(path: Path, model: onnx.ModelProto | None, folder: Path | None, role: str) -> dict[Path, str]:
    files = {p: f"a data file of the {role} model" for p in referenced_files(model, folder)} if folder else {}
    return files | ({path: f"the {role} model"} if path is not None else {})


def model_files(path: Path, role: str) -> dict[Path, str]:
    """A model file and the data files it names, each with a description (just the file if it is not a model,
    or not a regular file: a FIFO would block the read, a device never end it)."""
    if not path.is_file():
        return {path: f"the {role} model"}
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model (or no file): no data files to name
        return {path: f"the {role} model"}
    return _labelled(path, model, path.parent, role)


def input_files(source: ModelSource | None) -> dict[Path, str]:
    """The input model's file and its data files, each with a description."""
    if source is None:
        return {}
    return _labelled(source.path, source.model, source.base_dir, "input")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same resolved path, or (links) the same device and inode."""
    try:
        if a.resolve() == b.resolve():
            return True
        sa, sb = a.stat(), b.stat()
    except (OSError, RuntimeError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


SYSTEM_FOLDERS = (Path("/dev"), Path("/proc"))  # their links (/dev/stdout -> /proc/self/fd/1) are not outputs
ORDINARY_FOLDERS = (Path("/dev/shm"),)  # a memory file system, for files like any other


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _in_system_folder(path: Path) -> bool:
    return (any(_under(path, f) for f in SYSTEM_FOLDERS) and not any(_under(path, f) for f in ORDINARY_FOLDERS))


def system_location(path: Path) -> Path | None:
    """Where ``path``, its folder's real location, or a link it leads through lies in a ``SYSTEM_FOLDERS``
    folder (not /dev/shm), if anywhere: an output written there by renaming would replace a link of the
    system's (/dev/stdout itself, for root) or of a process."""
    absolute = Path(os.path.abspath(path))
    located = Path(os.path.realpath(absolute.parent)) / absolute.name  # a linked folder leading there
    if _in_system_folder(located):
        return located
    current = absolute
    for _ in range(40):  # the kernel's own limit on links followed
        if _in_system_folder(current):
            return current
        if not current.is_symlink():
            return None
        current = Path(os.path.abspath(current.parent / os.readlink(current)))
    return current


def check_destination(path: Path, keep: dict[Path, Text], what: Text) -> None:
    """Refuse to write ``path`` if it is (or leads to) a file of ``keep`` (described by its value), lies in
    /dev or /proc or links there, exists and is not a regular file, or lies in a folder that is missing or
    not writable."""
    system = system_location(path)
    if system is not None:
        raise CollapseError(what, f" {str(path)!r} ", "is" if system == path else f"leads to {str(system)!r},",
                            " a device or process file; refusing to replace it (name a file to write)")
    folder = path.parent
    if not folder.is_dir():
        raise CollapseError(what, f" folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CollapseError(what, f" folder {str(folder)!r} is not writable")
    if os.path.exists(path) and not path.is_file():
        raise CollapseError(what, f" {str(path)!r} exists and is not a regular file; refusing to replace it")
    for kept, description in keep.items():
        if same_file(path, kept):
            raise CollapseError(what, f" {str(path)!r} is ", description, f" {str(kept)!r}; refusing to replace it")


def check_overwrite(output: str | os.PathLike | None, input_path: Path | None, overwrite: bool) -> None:
    """Refuse an ``output`` that is the input model's file ``input_path`` (by path or link) unless ``overwrite``."""
    if output is None or input_path is None or overwrite:
        return
    if not isinstance(output, (str, os.PathLike)):
        raise CollapseError(f"the output must be a path, not {type(output).__name__}")
    if same_file(Path(output), input_path):
        raise CollapseError(f"{str(output)!r} is the input file; pass ", Param("overwrite", True), " to replace it")


def check_report_file(path: str | os.PathLike | None, source: ModelSource | None, named: dict[Path, Text],
                      output: str | os.PathLike | None, what: Text = "the report") -> None:
    """Before any work: refuse a report ``path`` (if any) that is (or leads to) the input model or its data,
    a file of ``named``, or the ``output`` model or a file it uses (``check_destination``)."""
    if path is None:
        return
    if not isinstance(path, (str, os.PathLike)):
        raise CollapseError(what, f" must be a path, not {type(path).__name__}")
    out = {} if output is None else ({Path(output): "the output model"} | (
        model_files(Path(output), "output") if Path(output).is_file() else {}))
    check_destination(Path(path), input_files(source) | named | out, what)


def data_files(inputs, calibrate, reference=None, labels=None) -> dict[Path, Text]:
    """The ``inputs``, ``calibrate`` and ``labels`` files of a run and the ``reference`` model with its data
    files (those given as paths), each with a description."""
    named: dict[Path, Text] = {}
    for param, value in ((Param("inputs"), inputs), (Param("calibrate"), calibrate), (Param("labels"), labels)):
        if isinstance(value, (str, os.PathLike)):
            named[Path(value)] = ("the ", param, " file")
    if isinstance(reference, (str, os.PathLike)):
        named.update(model_files(Path(reference), "reference"))
    return named


def read_npz(path: str | os.PathLike, what: Text, limit: int | None, why: Text) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, read safely: a regular file only (a FIFO would block), no pickles, and
    every member's declared size (the zip's and the .npy header's) checked against ``limit`` bytes (``why``
    names that limit) and against what the member holds, before anything is inflated. CollapseError
    (naming ``what`` and the file) for anything else."""
    return _open_npz(path, what, lambda archive, label: _read_members(archive, label, limit, why))


def npz_shapes(path: str | os.PathLike, what: Text) -> dict[str, tuple[int, ...]]:
    """The shapes of an .npz file's arrays, from their headers (nothing inflated), checked as ``read_npz``
    checks them; CollapseError naming ``what`` and the file otherwise."""
    return _open_npz(path, what, lambda archive, label: {
        name: shape for name, _, shape in _headers(archive, label, None, "")})


def _open_npz(path: str | os.PathLike, what: Text, read):
    """``read(archive, label)`` of the .npz at ``path``, opened as ``read_npz`` says; its errors one line."""
    label = (what, f" {str(path)!r}")
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        raise CollapseError(label, f": cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CollapseError(label, " is not a regular file")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic == b"\x93NUMPY":
                raise CollapseError(label, " is a .npy file (one unnamed array); save one array per model "
                                    "input by name in an .npz, e.g. np.savez(path, x=...)")
            if magic[:2] != b"PK":  # an .npz is a zip archive; a text file is not
                raise CollapseError(label, " is not an .npz archive; save one array per model input by name "
                                    "with numpy, e.g. np.savez(path, x=array)")
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                return read(archive, label)
    except CollapseError:
        raise
    except MemoryError:
        raise CollapseError(label, ": out of memory reading it") from None
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many types (tokenize, ast, zlib...)
        raise CollapseError(label, f": cannot read as .npz ({one_line(exc, 200)})") from None


def _headers(archive: zipfile.ZipFile, label: Text, limit: int | None, why: Text):
    """(name, member, shape) of each array, its header checked against what the member holds and the running
    total of declared sizes against ``limit``."""

    def refuse_size(total: int, whose: str) -> None:
        if limit is not None and total > limit:
            raise CollapseError(label, f": {whose} {total / 2**20:.1f} MiB, over the limit of "
                                f"{limit / 2**20:.1f} MiB (", why, "); raise ", Param("max_verify_memory"),
                                " or give less data")

    members = archive.infolist()
    refuse_size(sum(m.file_size for m in members), "its arrays declare")
    headers, declared = [], 0
    for member in members:
        name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
        with archive.open(member) as stream:
            version = np.lib.format.read_magic(stream)
            shape, _, dtype = _read_header(stream, version)
            start = stream.tell()
        if dtype.hasobject:
            raise CollapseError(label, f": array {name!r} holds Python objects, which are not read (no pickles)")
        nbytes = math.prod(shape) * dtype.itemsize
        if any(d < 0 for d in shape) or nbytes > member.file_size - start:
            raise CollapseError(label, f": array {name!r} claims shape {shape} of {dtype}, more than the "
                                f"{member.file_size - start} bytes it holds")
        declared += nbytes
        refuse_size(declared, "its arrays' headers declare")
        headers.append((name, member, tuple(shape)))
    return headers


def _read_members(archive: zipfile.ZipFile, label: Text, limit: int | None, why: Text) -> dict[str, np.ndarray]:
    arrays = {}
    for name, member, _ in _headers(archive, label, limit, why):
        with archive.open(member) as stream:
            array = np.lib.format.read_array(stream, allow_pickle=False)
        if not array.dtype.isnative:  # stored big-endian (say): onnxruntime would read the bytes as native ones
            array = array.astype(array.dtype.newbyteorder("="))
        arrays[name] = array
    return arrays


def _read_header(stream, version: tuple[int, int]):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")


def _mode(path: Path) -> int | None:
    """Permission bits of an existing regular file (a link's target), else None."""
    try:
        info = path.stat()
    except OSError:
        return None
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else None


def _chmod(path: Path, mode: int | None) -> None:
    if mode is not None:
        os.chmod(path, mode)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _remove_stale(folder: Path, prefix: str) -> None:
    """Remove scratch folders of this host's dead runs, a minute old or more (never a live run's)."""
    pattern = re.compile(re.escape(prefix) + r"(?P<host>[\w.]+)-(?P<pid>\d+)-\w+")
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = pattern.fullmatch(entry.name)
            if not match or match["host"] != HOST or _alive(int(match["pid"])):
                continue
            if entry.is_dir(follow_symlinks=False) and time.time() - entry.stat().st_mtime > STALE_AFTER:
                shutil.rmtree(entry.path, ignore_errors=True)


def scratch_dir(folder: Path, prefix: str) -> tempfile.TemporaryDirectory:
    """A temporary folder in ``folder`` named ``prefix<host>-<pid>-<random>`` (stale ones removed first);
    CollapseError naming the folder when it cannot be made (read-only, full, missing)."""
    _remove_stale(folder, prefix)
    try:
        return tempfile.TemporaryDirectory(dir=folder, prefix=f"{prefix}{HOST}-{os.getpid()}-")
    except OSError as exc:
        raise CollapseError(f"cannot make a scratch folder in {str(folder)!r}: {_first_line(exc)}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename, keeping an existing file's mode."""
    with StagedText(path, text) as staged:
        staged.commit()


class StagedText:
    """A text file written in full into a hidden folder beside ``path`` (a full disk fails here, before
    anything is replaced), then put in place by ``commit`` in one rename. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, text: str) -> None:
        self.path = Path(path)
        with write_errors(self.path):
            self._tmp = scratch_dir(self.path.parent, STAGING_PREFIX)
            try:
                self.staged = Path(self._tmp.name) / self.path.name
                self.staged.write_text(text)
                _chmod(self.staged, _mode(self.path))
            except BaseException:
                self._tmp.cleanup()
                raise

    def commit(self) -> None:
        """Put the text in place (one rename)."""
        with write_errors(self.path):
            os.replace(self.staged, self.path)

    def __enter__(self) -> StagedText:
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()


@contextlib.contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """OSError (a full disk, a read-only folder) as a CollapseError naming the file being written."""
    try:
        yield
    except OSError as exc:
        raise CollapseError(f"cannot write {str(path)!r}: {_first_line(exc)}") from None


def uses_external(model: onnx.ModelProto) -> bool:
    return bool(external_tensors(model))


def _copy_range(src, dst, offset: int, length: int) -> None:
    src.seek(offset)
    while length > 0:
        chunk = src.read(min(CHUNK, length))
        if not chunk:
            raise CollapseError("external data file ended early")
        dst.write(chunk)
        length -= len(chunk)


def _write_tensors(model: onnx.ModelProto, source_dir: Path | None, data_path: Path, data_name: str,
                   size_threshold: int) -> None:
    """Move tensor data of ``model`` (a copy we may edit) into ``data_path``: external tensors are copied
    from their source files in chunks, embedded ones of ``size_threshold`` bytes or more are written out."""
    with contextlib.closing(_Sources()) as sources, open(data_path, "wb") as out:
        for tensor in all_tensors(model):
            external = uses_external_data(tensor)
            if not external and not (tensor.HasField("raw_data") and dense_bytes(tensor) >= size_threshold):
                continue
            size = TensorStore.nbytes(tensor) if external else dense_bytes(tensor)  # (no copy of raw_data)
            out.write(b"\0" * ((-out.tell()) % (ALIGN_LARGE if size >= 2**20 else ALIGN_SMALL)))
            offset = out.tell()
            if external:
                info = ExternalDataInfo(tensor)
                src = sources.get((source_dir or Path(".")) / info.location)
                _copy_range(src, out, info.offset or 0, info.length or dense_bytes(tensor))
            else:
                out.write(tensor.raw_data)
                tensor.ClearField("raw_data")
            length = out.tell() - offset
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                tensor.external_data.add(key=key, value=value)


def _is_repeated(desc) -> bool:
    """Whether a protobuf field is repeated (``label`` is gone from newer protobuf releases)."""
    flag = getattr(desc, "is_repeated", None)
    return bool(flag) if flag is not None else desc.label == desc.LABEL_REPEATED


def copy_fields(src, dst, skip: set[str]) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except those named in ``skip``."""
    for desc, value in src.ListFields():
        if desc.name in skip:
            continue
        if _is_repeated(desc):
            getattr(dst, desc.name).extend(value)
        elif desc.message_type is not None:
            getattr(dst, desc.name).CopyFrom(value)
        else:
            setattr(dst, desc.name, value)


def data_backed(tensors: Sequence[onnx.TensorProto], data_path: Path, size_threshold: int
                ) -> list[onnx.TensorProto]:
    """``tensors`` for a model saved beside ``data_path``: those with ``size_threshold`` bytes of raw data or
    more as copies whose data is in that file (written one tensor at a time), the others as they are.
    A model built from them is small in memory, and onnxruntime reads their data from the file."""
    out = []
    with open(data_path, "ab") as f:
        for tensor in tensors:
            if not tensor.HasField("raw_data") or dense_bytes(tensor) < size_threshold:
                out.append(tensor)
                continue
            f.write(b"\0" * ((-f.tell()) % ALIGN_LARGE))
            offset = f.tell()
            f.write(tensor.raw_data)
            copy = onnx.TensorProto()
            copy_fields(tensor, copy, skip={"raw_data", "external_data", "data_location"})
            copy.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)),
                               ("length", str(f.tell() - offset))):
                copy.external_data.add(key=key, value=value)
            out.append(copy)
    return out


def read_external(tensor: onnx.TensorProto, base_dir: Path) -> bytes:
    """The raw bytes of an external ``tensor`` whose data file lies in ``base_dir``."""
    info = ExternalDataInfo(tensor)
    path = base_dir / info.location
    try:
        with open(path, "rb") as f:
            f.seek(info.offset or 0)
            data = f.read(info.length or dense_bytes(tensor))
    except OSError as exc:
        raise CollapseError(f"cannot read {str(path)!r}: {_first_line(exc)}") from None
    if len(data) != (info.length or dense_bytes(tensor)):
        raise CollapseError(f"{str(path)!r} is too short for tensor {tensor.name!r}")
    return data


class _Sources:
    """Source data files opened on demand, at most OPEN_SOURCES at once (least recently used closed first)."""

    def __init__(self):
        self.handles: OrderedDict[Path, object] = OrderedDict()

    def get(self, path: Path):
        handle = self.handles.pop(path, None)
        if handle is None:
            if len(self.handles) >= OPEN_SOURCES:
                self.handles.popitem(last=False)[1].close()
            handle = open(path, "rb")  # noqa: SIM115 - closed by close() or when evicted
        self.handles[path] = handle
        return handle

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def write_model(model: onnx.ModelProto, path: Path, external_data: bool, source_dir: Path | None,
                size_threshold: int = 1024, data_name: str | None = None, consume: bool = False) -> None:
    """Write ``model`` to ``path`` (not atomically; see StagedOutput), its data to ``data_name`` beside it
    (default ``path.name + '.data'``).

    External tensors of ``model`` are read from ``source_dir``. The caller's ``model`` is not modified,
    unless it ``consume``s it: its embedded data is then moved out as it is written (no copy of it in memory).
    """
    data_name = data_name or path.name + ".data"
    to_write = model
    if external_data or uses_external(model):
        if not consume:
            to_write = onnx.ModelProto()
            to_write.CopyFrom(model)  # embedded tensors are copied too: their data is moved out below
        if external_data:
            _write_tensors(to_write, source_dir, path.parent / data_name, data_name, size_threshold)
        else:
            embed_external_data(to_write, source_dir)
    if to_write.ByteSize() > PROTOBUF_LIMIT:
        raise CollapseError("the model is over 2 GB: it must be written with external data (",
                            Param("external_data", True), ")")
    with open(path, "wb") as f:
        f.write(to_write.SerializeToString(deterministic=True))


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` accepts (255 where it does not say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _orphan(path: Path) -> bool:
    """Whether ``path``, an ``OUT.<hex>.data`` file the current output does not use, is a killed run's
    (moved in, its model never committed): moved in a minute ago or more (its inode change time; a live run
    commits its model within microseconds of moving its data in)."""
    try:
        return path.is_file() and not path.is_symlink() and time.time() - path.stat().st_ctime > STALE_AFTER
    except OSError:
        return False


def data_file_name(folder: Path, name: str, token: str) -> str:
    """``<name>.<token>.data``, the name of an output's fresh data file; when that is longer than the file
    system allows, ``name`` is cut (at a character boundary) so that it fits."""
    full = f"{name}.{token}.data"
    room = name_max(folder) - len(f".{token}.data".encode())
    if len(full.encode()) <= name_max(folder) or room <= 0:
        return full
    return f"{name.encode()[:room].decode(errors='ignore')}.{token}.data"


class StagedOutput:
    """An output written into a hidden folder beside its final path and committed in one rename (see the
    module docstring), so the output is complete or absent. No file of ``inputs`` (the input model, if any)
    is replaced or removed, except the input model and its data when the output is that model itself; nor
    is a file of ``data`` (the run's other input files, by description). Use as a context manager."""

    def __init__(self, path: str | os.PathLike, external_data: bool | None, source_dir: str | os.PathLike | None,
                 inputs: ModelSource | None = None, data: dict[Path, Text] | None = None):
        self.path = Path(path)
        self.folder = self.path.parent
        keep = input_files(inputs)
        check_destination(self.path, {p: d for p, d in keep.items() if p != getattr(inputs, "path", None)}
                          | (data or {}), "output")
        replaces_input = inputs is not None and inputs.path is not None and same_file(self.path, inputs.path)
        # the old output's files that must stay: the input's (unless the output replaces it) and the run's others
        self.keep = (set() if replaces_input else set(keep)) | set(data or {})
        self.source_dir = None if source_dir is None else Path(source_dir)
        self.external_data = external_data
        self.data_name = data_file_name(self.folder, self.path.name, secrets.token_hex(6))
        with write_errors(self.path):
            self._tmp = scratch_dir(self.folder, STAGING_PREFIX)
        self.staged = Path(self._tmp.name) / self.path.name
        self.staged_data = Path(self._tmp.name) / self.data_name
        self.scratch = Path(self._tmp.name) / "scratch"  # our own working files, beside the output (not /tmp)

    def write(self, model: onnx.ModelProto, consume: bool = False) -> Path:
        """Write ``model`` to the staging folder; returns the staged model's path (loadable as is). A model
        it may ``consume`` is edited instead of copied: its data moved out, or external data embedded
        (see ``write_model``); the caller should not use it afterwards."""
        external = self.external_data
        if external is None:
            weight_bytes = sum(TensorStore.nbytes(t) for t in external_tensors(model))
            external = model.ByteSize() + weight_bytes > EXTERNAL_DATA_THRESHOLD
        with write_errors(self.path):
            if self.staged_data.exists():
                self.staged_data.unlink()
            write_model(model, self.staged, external, self.source_dir, data_name=self.data_name,
                        consume=consume)
        return self.staged

    def commit(self, companions: Mapping[str | os.PathLike, str] | None = None) -> None:
        """Data file in under its fresh name, then one rename of the model, then the ``companions`` (text
        files by path, e.g. the run's report: written in full before anything is replaced), all with
        signals deferred; then the old data files go."""
        with contextlib.ExitStack() as texts:
            staged_texts = [texts.enter_context(StagedText(path, text)) for path, text in (companions or {}).items()]
            with write_errors(self.path):
                mode = _mode(self.path)
                data = self.folder / self.data_name
                _chmod(self.staged, mode)
                with signals_deferred():
                    if self.staged_data.exists():
                        _chmod(self.staged_data, mode)
                        os.replace(self.staged_data, data)
                    try:
                        stale = self._stale_data()  # after the move: what the output in place now uses
                        os.replace(self.staged, self.path)
                    except Exception:  # the data moved in is no model's
                        data.unlink(missing_ok=True)
                        raise
                    for text in staged_texts:
                        text.commit()
                for old in stale:
                    old.unlink(missing_ok=True)

    def _stale_data(self) -> list[Path]:
        """The current output's own data files (``OUT.<hex>.data``, the names this tool writes) that the new
        model does not use and the input does not read, and killed runs' orphans (``_orphan``), with or
        without an OUT. An ``OUT.data`` (an exporter's name) stays: another model may read it too."""
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            return []
        short = data_file_name(self.folder, self.path.name, "0" * 12)[:-len(".000000000000.data")]
        names = "|".join(dict.fromkeys(map(re.escape, (self.path.name, short))))
        pattern = re.compile(rf"(?:{names})\.[0-9a-f]{{12}}\.data")  # our names only: OUT.data may be another's too
        candidates = [p for p in self.folder.iterdir() if pattern.fullmatch(p.name) and p.name != self.data_name]
        used = model_files(self.path, "output") if candidates and self.path.exists() else {}
        return [p for p in candidates if (any(same_file(p, u) for u in used) or _orphan(p))
                and not any(same_file(p, k) for k in self.keep)]

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None,
               source_dir: str | os.PathLike | None = None) -> None:
    """Write ``model`` atomically to ``path``; external data, if any, to ``path.data`` beside it.

    ``external_data=None`` chooses it only when the model is too large for one protobuf. ``source_dir``
    is the folder the model's own external tensors are read from (the input model's folder).
    """
    with StagedOutput(path, external_data, source_dir) as out:
        out.write(model)
        out.commit()


@dataclass
class ModelSource:
    """A model and where its weights live: ``base_dir`` for external data, ``path`` if a file holds it as is."""

    model: onnx.ModelProto
    base_dir: Path | None = None
    path: Path | None = None


def open_model(model_or_path: onnx.ModelProto | ModelSource | str | os.PathLike) -> ModelSource:
    """A ModelSource we may edit: loaded lazily from a path, or a copy of the caller's ModelProto."""
    if not isinstance(model_or_path, (onnx.ModelProto, ModelSource, str, os.PathLike)):
        raise CollapseError("a model is a path or an onnx.ModelProto, not "
                            f"{type(model_or_path).__name__}" + (" (load the bytes with onnx.load_from_string)"
                                                                 if isinstance(model_or_path, bytes) else ""))
    if isinstance(model_or_path, ModelSource):
        copy = onnx.ModelProto()
        copy.CopyFrom(model_or_path.model)
        return ModelSource(copy, model_or_path.base_dir, model_or_path.path)
    if isinstance(model_or_path, onnx.ModelProto):
        if uses_external(model_or_path):
            raise CollapseError("the model refers to external data files; pass its path instead of a ModelProto")
        copy = onnx.ModelProto()
        copy.CopyFrom(model_or_path)
        return ModelSource(copy, None, None)
    path = Path(model_or_path)
    return ModelSource(load_model(path), path.parent, path)
