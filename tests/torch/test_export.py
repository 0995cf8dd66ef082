"""export_onnx: a collapsible PyTorch model exported with either exporter gives a graph that folds and computes
what the module does."""

import numpy as np
import pytest

from tests.common import TORCH_SKIP

torch = pytest.importorskip("torch", reason=TORCH_SKIP)
from torch import nn  # noqa: E402

from onnx_collapse import optimize  # noqa: E402
from onnx_collapse.torch import export_onnx, make_collapsible, snap_slopes  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("dynamo", [True, False])
@pytest.mark.parametrize("shape", [(3, 16), (2, 5, 16)])
def test_exported_graphs_fold_with_both_exporters(tmp_path, dynamo, shape):
    torch.manual_seed(0)
    model = make_collapsible(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)))
    snap_slopes(model, tol=1.0)
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.randn(*shape), path, dynamo=dynamo)
    out, report = optimize(path)
    assert [f.status for f in report.folds] == ["folded"] and report.verification.passed
    x = torch.randn(4, *shape[1:])
    import onnxruntime as ort

    got = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-3, atol=1e-4)
