"""End to end on real data: train a small collapsible MLP on digits with the penalty, export, collapse,
and check that test accuracy of the two ONNX models agrees within the stated bound (0.5 points)."""


import numpy as np
import pytest

from tests.common import TORCH_SKIP

torch = pytest.importorskip("torch", reason=TORCH_SKIP)
pytest.importorskip("sklearn", reason="scikit-learn (in the torch extra) is not installed")

import onnx  # noqa: E402
from digits import mlp, onnx_accuracy, splits, train  # noqa: E402

from onnx_collapse import optimize  # noqa: E402
from onnx_collapse.torch import collapsible_slopes, export_onnx  # noqa: E402

pytestmark = pytest.mark.torch


def test_penalised_mlp_collapses_with_at_most_half_a_point_of_accuracy_loss(tmp_path):
    torch.set_num_threads(2)
    train_set, val, test = splits()
    model = train(mlp(hidden=64, depth=3), train_set, lam=1.0, epochs=40, lr=5e-3)
    assert all(abs(1 - float(s.weight.detach())) < 0.05 for s in collapsible_slopes(model)[1:])
    path = tmp_path / "digits.onnx"
    export_onnx(model, torch.from_numpy(test[0][:2]), path)
    np.savez(tmp_path / "val.npz", x=val[0])
    out, report = optimize(path, inputs=str(tmp_path / "val.npz"), metric="top1", min_agreement=0.995)
    assert report.verification.passed
    assert report.after.params <= 0.5 * report.before.params
    exported, collapsed = onnx_accuracy(onnx.load(str(path)), *test), onnx_accuracy(out, *test)
    assert exported > 0.9
    assert abs(exported - collapsed) <= 0.005
