"""Export torch models to the ONNX graphs the optimizer recognises."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress lines and warnings."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch.export").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    dynamo: bool = True,
    opset: int = 18,
    single_file: bool = True,
) -> onnx.ModelProto:
    """Export ``model`` on ``example`` (input ``x``, output ``y``) and return the saved ModelProto.

    2-D inputs give ``Gemm(transB=1)`` layers, N-D inputs ``MatMul`` + ``Add``. ``dynamo=True`` uses
    torch's default exporter (it needs onnxscript). ``single_file`` re-saves the weights inside the
    .onnx file (the dynamo exporter writes a .onnx.data file beside it); keep it off for models near 2 GB.
    """
    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp, _quiet(), torch.no_grad():
        raw = Path(tmp) / "model.onnx"
        kwargs = {"input_names": ["x"], "output_names": ["y"], "opset_version": opset, "dynamo": dynamo}
        if dynamic_batch:
            if dynamo:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
            else:
                kwargs["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
        torch.onnx.export(model, (example,), str(raw), **kwargs)
        exported = onnx.load(str(raw))
        exported.producer_name = exported.producer_name or "pytorch"
        if single_file:
            onnx.save_model(exported, str(path))
        else:
            onnx.save_model(exported, str(path), save_as_external_data=True, location=Path(path).name + ".data")
    return exported
