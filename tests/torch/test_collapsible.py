"""The training side: make_collapsible, collapse_penalty, snap_slopes, and the collapsible models they give."""

import numpy as np
import pytest

from tests.common import TORCH_SKIP

torch = pytest.importorskip("torch", reason=TORCH_SKIP)
from torch import nn  # noqa: E402

from onnx_collapse import optimize  # noqa: E402
from onnx_collapse.torch import (  # noqa: E402
    collapse_penalty,
    collapsible_slopes,
    export_onnx,
    make_collapsible,
    snap_slopes,
)

pytestmark = pytest.mark.torch


def test_activations_between_linears_become_prelu_starting_where_they_were():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Dropout(0.1), nn.LeakyReLU(0.2),
                          nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2), nn.ReLU())
    make_collapsible(model)
    slopes = collapsible_slopes(model)
    assert [float(s.weight.detach()) for s in slopes] == pytest.approx([0.0, 0.2, 0.01])
    assert isinstance(model[8], nn.ReLU)  # after the last Linear: not between two linears


def test_per_channel_slopes():
    model = make_collapsible(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), per_channel=True)
    assert collapsible_slopes(model)[0].weight.shape == (6,)


def test_mlp_style_module_with_fc1_act_fc2():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    block = make_collapsible(Block())
    assert isinstance(block.act, nn.PReLU) and collapsible_slopes(block) == [block.act]


def test_normalisation_layers_are_not_replaced_and_no_pattern_is_a_clear_error():
    with pytest.raises(ValueError, match="no activation between two nn.Linear or two nn.Conv"):
        make_collapsible(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4)))


def test_penalty_gradient_drives_slopes_to_one():
    model = make_collapsible(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    distances = []
    for _ in range(30):
        loss = collapse_penalty(model)
        distances.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert distances[0] == pytest.approx(2.0)  # two slopes starting at 0
    assert all(b < a for a, b in zip(distances, distances[1:])) and distances[-1] < 1e-4


def test_snap_slopes_sets_exact_ones_and_freezes_them():
    model = make_collapsible(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    with torch.no_grad():
        collapsible_slopes(model)[0].weight.fill_(0.97)
    assert snap_slopes(model, tol=0.05) == 1
    slope = collapsible_slopes(model)[0].weight
    assert float(slope) == 1.0 and not slope.requires_grad


@pytest.mark.parametrize("dynamo", [True, False])
def test_conv_act_conv_blocks_become_collapsible_and_fold(tmp_path, dynamo):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1),
                          nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    make_collapsible(model, per_channel=True)
    slopes = collapsible_slopes(model)
    assert [s.weight.shape[0] for s in slopes] == [16]  # the depthwise conv and the Flatten end the pattern
    assert float(collapse_penalty(model).detach()) == pytest.approx(16.0)  # starts at ReLU's 0
    snap_slopes(model, tol=1.0)
    model.eval()
    path = tmp_path / "cnn.onnx"
    export_onnx(model, torch.randn(2, 3, 8, 8), path, dynamo=dynamo)
    out, report = optimize(path)
    assert [f.status for f in report.folds] == ["folded"] and report.verification.passed
    x = torch.randn(5, 3, 8, 8)
    import onnxruntime as ort

    got = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-3, atol=1e-4)
