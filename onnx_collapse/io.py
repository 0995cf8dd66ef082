"""Loading and saving models: lazy external data, atomic writes, streaming copies of untouched weights.

A model is loaded without its external data: tensors stored in ``.data`` files stay on disk and are
read one at a time when a pass needs their values (``TensorStore``). Saving copies untouched external
tensors from the source file to the output's own data file in chunks, so memory stays near the size
of the weights actually changed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, MutableSequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from .errors import CollapseError

PROTOBUF_LIMIT = 2**31 - 1
# Above this size a model is written with external data even when not asked to.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
ALIGN_LARGE, ALIGN_SMALL = 4096, 64  # tensor offsets in a written data file: pages for tensors >= 1 MiB
CHUNK = 64 * 2**20


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers and tensor attributes, subgraphs included."""
    return _get_all_tensors(model)


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
            return int(ExternalDataInfo(tensor).length or _dense_bytes(tensor))
        return len(tensor.raw_data) if tensor.HasField("raw_data") else _dense_bytes(tensor)


def _dense_bytes(tensor: onnx.TensorProto) -> int:
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _check_external_paths(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external data that points outside the model's folder, is missing, or is too short."""
    root = base_dir.resolve()
    for tensor in external_tensors(model):
        info = ExternalDataInfo(tensor)
        location = info.location
        target = (root / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(root):
            raise CollapseError(f"external data path {location!r} of tensor {tensor.name!r} escapes the model's "
                                f"folder {str(root)!r}")
        if not target.is_file():
            raise CollapseError(f"external data file {str(target)!r} (tensor {tensor.name!r}) is missing")
        end = (info.offset or 0) + (info.length or _dense_bytes(tensor))
        if end > target.stat().st_size:
            raise CollapseError(f"external data file {str(target)!r} is too short for tensor {tensor.name!r}")


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
    _check_external_paths(model, path.parent)
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
    except (onnx.checker.ValidationError, ValueError, RuntimeError, OSError) as exc:
        raise CollapseError(f"{str(path)!r} fails onnx.checker: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a model file plus the external data files it references."""
    path = Path(path)
    total = path.stat().st_size
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - size is informative only
        return total
    for location in {ExternalDataInfo(t).location for t in external_tensors(model)}:
        data = path.parent / location
        if data.is_file():
            total += data.stat().st_size
    return total


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
    sources: dict[Path, object] = {}
    try:
        with open(data_path, "wb") as out:
            for tensor in all_tensors(model):
                external = uses_external_data(tensor)
                if not external and not (tensor.HasField("raw_data") and len(tensor.raw_data) >= size_threshold):
                    continue
                size = TensorStore.nbytes(tensor)
                out.write(b"\0" * ((-out.tell()) % (ALIGN_LARGE if size >= 2**20 else ALIGN_SMALL)))
                offset = out.tell()
                if external:
                    info = ExternalDataInfo(tensor)
                    src_path = (source_dir or Path(".")) / info.location
                    if src_path not in sources:
                        sources[src_path] = open(src_path, "rb")  # noqa: SIM115 - closed below
                    _copy_range(sources[src_path], out, info.offset or 0, info.length or _dense_bytes(tensor))
                else:
                    out.write(tensor.raw_data)
                    tensor.ClearField("raw_data")
                length = out.tell() - offset
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    tensor.external_data.add(key=key, value=value)
    finally:
        for handle in sources.values():
            handle.close()


def write_model(model: onnx.ModelProto, path: Path, external_data: bool, source_dir: Path | None,
                size_threshold: int = 1024) -> None:
    """Write ``model`` to ``path`` (not atomically; see StagedOutput), its data to ``path.name + '.data'``.

    External tensors of ``model`` are read from ``source_dir``. The caller's ``model`` is not modified.
    """
    to_write = model
    if external_data or uses_external(model):
        to_write = onnx.ModelProto()
        to_write.CopyFrom(model)  # cheap: external tensors carry no data; embedded ones are moved out below
        if external_data:
            _write_tensors(to_write, source_dir, path.parent / (path.name + ".data"), path.name + ".data",
                           size_threshold)
        else:
            embed_external_data(to_write, source_dir)
    if to_write.ByteSize() > PROTOBUF_LIMIT:
        raise CollapseError("the model is over 2 GB: it must be written with external data (--external-data)")
    with open(path, "wb") as f:
        f.write(to_write.SerializeToString(deterministic=True))


class StagedOutput:
    """An output written into a hidden folder beside its final path and renamed into place on commit(),
    so the output (and its .data file) is complete or absent. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, external_data: bool | None, source_dir: str | os.PathLike | None):
        self.path = Path(path)
        self.folder = self.path.parent if str(self.path.parent) else Path(".")
        if not self.folder.is_dir():
            raise CollapseError(f"output folder {str(self.folder)!r} does not exist")
        self.source_dir = None if source_dir is None else Path(source_dir)
        self.external_data = external_data
        self._tmp = tempfile.TemporaryDirectory(dir=self.folder, prefix=".onnx-collapse-")
        self.staged = Path(self._tmp.name) / self.path.name
        self.staged_data = Path(self._tmp.name) / (self.path.name + ".data")

    def write(self, model: onnx.ModelProto) -> Path:
        """Write ``model`` to the staging folder; returns the staged model's path (loadable as is)."""
        external = self.external_data
        if external is None:
            weight_bytes = sum(TensorStore.nbytes(t) for t in external_tensors(model))
            external = model.ByteSize() + weight_bytes > EXTERNAL_DATA_THRESHOLD
        if self.staged_data.exists():
            self.staged_data.unlink()
        write_model(model, self.staged, external, self.source_dir)
        return self.staged

    def commit(self) -> None:
        if self.staged_data.exists():
            os.replace(self.staged_data, self.folder / self.staged_data.name)
        os.replace(self.staged, self.path)

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
