"""onnx-collapse: fold near-linear Gemm/MatMul chains of exported ONNX models, verified in onnxruntime."""

from .errors import CollapseError
from .options import Options
from .pipeline import analyze, optimize
from .report import ErrorStats, FoldRecord, ModelStats, Report, Verification
from .verify import verify

__all__ = [
    "CollapseError", "ErrorStats", "FoldRecord", "ModelStats", "Options", "Report", "Verification",
    "analyze", "optimize", "verify",
]
__version__ = "0.1.0"
