"""Loading and saving models: external data relative to the model's folder, atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import (
    ExternalDataInfo,
    _get_all_tensors,
    convert_model_to_external_data,
    load_external_data_for_model,
    uses_external_data,
)

from .errors import CollapseError

PROTOBUF_LIMIT = 2**31 - 1
# Above this serialized size a model is written with external data even when not asked to.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def _external_locations(model: onnx.ModelProto) -> list[str]:
    return [ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)]


def _check_external_paths(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external data that points outside the model's folder or is missing."""
    root = base_dir.resolve()
    for location in _external_locations(model):
        target = (root / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(root):
            raise CollapseError(f"external data path {location!r} escapes the model's folder {str(root)!r}")
        if not target.is_file():
            raise CollapseError(f"external data file {str(target)!r} is missing")


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX model; external data is read relative to the model's own folder."""
    path = Path(path)
    if not path.exists():
        raise CollapseError(f"{str(path)!r}: no such file")
    if not path.is_file():
        raise CollapseError(f"{str(path)!r}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise CollapseError(f"{str(path)!r} is not a valid ONNX model ({_first_line(exc)})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise CollapseError(f"{str(path)!r} is not a valid ONNX model (no graph or no opset)")
    _check_external_paths(model, path.parent)
    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CollapseError(f"{str(path)!r}: cannot read external data ({_first_line(exc)})") from None
    check_model(model, str(path))
    return model


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """Run onnx.checker; raise CollapseError with its first line on failure."""
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
        else:  # the checker cannot take >2 GB in memory: check a copy without the weights
            onnx.checker.check_model(_without_weights(model))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise CollapseError(f"{what!r} fails onnx.checker: {_first_line(exc)}") from None


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for tensor in skeleton.graph.initializer:
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        tensor.external_data.add(key="location", value="stripped")
    return skeleton


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
    for location in set(_external_locations(model)):
        data = path.parent / location
        if data.is_file():
            total += data.stat().st_size
    return total


def uses_external(model: onnx.ModelProto) -> bool:
    return bool(_external_locations(model))


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    external_data: bool | None = None,
    size_threshold: int = 1024,
) -> None:
    """Write ``model`` atomically: the file (and its ``.data`` file) appear complete or not at all.

    ``external_data=None`` chooses external data only when the model is too large for one protobuf.
    External data is always written beside the output, never referenced from the input's folder.
    """
    path = Path(path)
    if external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CollapseError(f"output folder {str(folder)!r} does not exist")
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".onnx-collapse-") as tmp:
        tmp_model = Path(tmp) / path.name
        if external_data:
            to_write = onnx.ModelProto()
            to_write.CopyFrom(model)
            convert_model_to_external_data(
                to_write, all_tensors_to_one_file=True, location=data_name, size_threshold=size_threshold
            )
            onnx.save_model(to_write, str(tmp_model))
            if (Path(tmp) / data_name).exists():
                os.replace(Path(tmp) / data_name, folder / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, path)
