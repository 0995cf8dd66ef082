"""onnx-collapse: fold near-linear Gemm/MatMul chains of exported ONNX models, verified in onnxruntime.

The API (``optimize``, ``analyze``, ``verify``, ``prune``, the report classes) is loaded on first use, so that the
command line can show its progress display before onnx and onnxruntime are imported.
"""

from __future__ import annotations

import importlib
import sys
import types

from .errors import CollapseError

_API = {"Options": "options", "analyze": "pipeline", "optimize": "pipeline", "ErrorStats": "report",
        "FoldRecord": "report", "ModelStats": "report", "Report": "report", "Verification": "report"}

__all__ = [
    "CollapseError", "ErrorStats", "FoldRecord", "ModelStats", "Options", "Report", "Verification",
    "analyze", "optimize", "prune", "verify",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule, e.g. onnx_collapse.report
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_SAME_NAME])


_SAME_NAME = ("prune", "verify")  # functions named as the submodule that holds them


def _same_name(name: str) -> property:
    """``onnx_collapse.<name>`` stays the function when the submodule of that name is imported (the import
    system sets the submodule as the package's attribute; an eager ``from .verify import verify`` would
    rebind it to the function)."""

    def setter(self, value) -> None:  # the import system recording the submodule: it stays in sys.modules
        pass

    return property(lambda self: getattr(importlib.import_module(f".{name}", __name__), name), setter)


class _Package(types.ModuleType):
    verify = _same_name("verify")
    prune = _same_name("prune")


sys.modules[__name__].__class__ = _Package
