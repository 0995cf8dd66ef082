"""Plain data the passes hand on: a segment's nodes, a plan's release of what it holds."""

from __future__ import annotations

import numpy as np
import onnx

from onnx_collapse.candidates import Candidate, Chain, Outcome
from onnx_collapse.io import ModelSource
from onnx_collapse.linalg import Factored
from onnx_collapse.options import Options
from onnx_collapse.pipeline import run_passes
from onnx_collapse.plans import FoldPlan
from tests.common import MODELS


def test_a_segment_lists_its_layers_and_links_nodes_once_in_order():
    (ctx,) = run_passes(ModelSource(onnx.load(str(MODELS / "three_layer.onnx"))), Options())
    (segment,) = ctx.segments
    positions = segment.node_positions()
    assert list(positions) == sorted(set(positions)) and len(positions) == 5  # 3 Gemm, 2 PRelu
    assert [ctx.view.nodes[link.node].op for link in segment.activations()] == ["PRelu", "PRelu"]


def test_release_drops_the_new_tensors_and_exact_maps_of_a_plan_and_its_fallbacks():
    tensor = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    exact = Factored((np.ones((4, 4)),), None)
    candidate = Candidate(Chain(["a"], [], [4, 4], [], 20, 16), (), None)
    below = candidate.push(FoldPlan(Outcome("dense"), (), (0,), "x", "y", [], [tensor], np.dtype(np.float32), exact,
                                    None))
    top = candidate.push(FoldPlan(Outcome("truncated"), (), (0,), "x", "y", [], [tensor], np.dtype(np.float32),
                                  exact, None))
    assert top.fallback is below
    top.release()
    assert top.initializers == [] and top.exact is None and below.initializers == [] and below.exact is None
