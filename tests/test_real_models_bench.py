"""The pure parts of benchmarks/real_models.py: CTC decoding, scores, box matching, the measured-MAC counter
on a model with dynamic spatial dims (against a hand count), deterministic rendering, the method table."""


from pathlib import Path

import numpy as np
import onnx
import pytest
import real_models
import realdata as rd

from tests.builders import parsed

LABELS = ["<blank>", "a", "b", "c", " "]


def one_hot(seq):
    return np.eye(len(LABELS), dtype=np.float32)[seq][None]


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    assert rd.ctc_greedy(one_hot([1, 1, 0, 1, 2, 2, 0, 0, 3, 4, 3]), LABELS) == ["aabc c"]
    assert rd.ctc_greedy(one_hot([0, 0, 0]), LABELS) == [""]
    two = np.concatenate([one_hot([2, 0, 2]), one_hot([3, 3, 3])])
    assert rd.ctc_greedy(two, LABELS) == ["bb", "c"]


def test_rec_scores_strip_and_count_characters():
    assert rd.edit_distance("kitten", "sitting") == 3
    assert rd.edit_distance("", "abc") == 3
    s = rd.rec_scores([" abc ", "abd"], ["abc", "abc"], reference=["abc", "abc"])
    assert s == {"exact": 0.5, "cer": 1 / 6, "same_decode": 0.5}


def test_the_paired_drop_counts_only_lines_that_changed_with_a_paired_standard_error():
    before = np.array([True] * 8 + [False] * 2)
    after = before.copy()
    after[[0, 1]] = False  # two lines lost
    after[8] = True  # one gained
    drop, se = rd.paired_drop(before, after)
    assert drop == pytest.approx(0.1)
    diff = np.array([1, 1, 0, 0, 0, 0, 0, 0, -1, 0], float)  # per line: lost 1, gained -1
    assert se == pytest.approx(diff.std(ddof=1) / np.sqrt(10))
    assert rd.paired_drop(before, before) == (0.0, 0.0)
    assert list(rd.exact_lines([" abc", "ab"], ["abc", "abc"])) == [True, False]


def test_box_matching_is_one_to_one_at_iou_half():
    truth = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)
    pred = np.array([[0, 0, 10, 9], [1, 0, 10, 10], [20, 0, 24, 10]], float)
    assert rd.box_iou(pred, truth)[0, 0] == pytest.approx(0.9)
    assert rd.match_count(pred, truth) == 1  # two candidates for the first box, the third is IoU 0.4


def test_map_boxes_expand_components_like_db():
    prob = np.zeros((40, 60), np.float32)
    prob[10:14, 5:45] = 0.9   # a shrunk text kernel 40 x 4
    prob[30, 50] = 0.9        # a speck below min_side
    boxes = rd.map_boxes(prob)
    d = 40 * 4 * 1.5 / (2 * 44)
    np.testing.assert_allclose(boxes, [[5 - d, 10 - d, 45 + d, 14 + d]])
    s = rd.det_scores(prob[None, None], [boxes], reference=prob[None, None])
    assert s["box_f1"] == 1.0 and s["map_iou"] == 1.0


def dynamic_model() -> onnx.ModelProto:
    """x [N,3,H,W] -> Conv 3->8 k3 pad1 stride2 -> depthwise Conv k3 group 8 -> ConvTranspose 8->4 k2 s2
    -> mean over H -> Transpose -> MatMul by a 4x5 weight -> mean over W -> Gemm 5->6 (transB)."""
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in
               [("w1", (8, 3, 3, 3)), ("w2", (8, 1, 3, 3)), ("w3", (8, 4, 2, 2)), ("w4", (4, 5)), ("w5", (6, 5))]}
    return parsed(f"""
        <ir_version: {onnx.IR_VERSION}, opset_import: ["" : 13]>
        g (float[N, 3, H, W] x) => (float[] y) {{
            [c1] c1 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w1)
            [c2] c2 = Conv <group = 8, pads = [1, 1, 1, 1]> (c1, w2)
            [c3] c3 = ConvTranspose <strides = [2, 2]> (c2, w3)
            r = ReduceMean <axes = [2], keepdims = 0> (c3)    # N,4,W
            t = Transpose <perm = [0, 2, 1]> (r)              # N,W,4
            [m] m = MatMul (t, w4)                            # N,W,5
            p = ReduceMean <axes = [1], keepdims = 0> (m)     # N,5
            [g] y = Gemm <transB = 1> (p, w5)                 # N,6
        }}""", weights)


def test_measured_macs_equal_a_hand_count_with_dynamic_spatial_dims():
    model = dynamic_model()
    x = np.zeros((2, 3, 10, 16), np.float32)
    got = rd.measured_macs(model, {"x": x})
    by = {lay["name"]: lay["macs"] for lay in got["layers"]}
    # c1: out 2x8x5x8, each 3*3*3; c2: out 2x8x5x8, each 1*3*3; c3: in 2x8x5x8, each 4*2*2 (out 2x4x10x16)
    # m: out 2x16x5, K=4; g: out 2x6, K=5
    hand = {"c1": 2 * 8 * 5 * 8 * 27, "c2": 2 * 8 * 5 * 8 * 9, "c3": 2 * 8 * 5 * 8 * 16, "m": 2 * 16 * 5 * 4,
            "g": 2 * 6 * 5}
    assert by == hand and got["total"] == sum(hand.values())
    assert rd.count_weights(model) == 8 * 27 + 8 * 9 + 8 * 16 + 20 + 30
    kinds = real_models.macs_by_kind(got["layers"])
    assert kinds["kxk conv (k>1)"] == hand["c1"] and kinds["depthwise/grouped conv"] == hand["c2"]


def test_rendering_is_deterministic():
    pytest.importorskip("PIL")
    labels = ["<blank>", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;-/()%#@", " "]
    a, ta = rd.rec_dataset(labels, 4, seed=7)
    b, tb = rd.rec_dataset(labels, 4, seed=7)
    assert ta == tb and np.array_equal(a, b) and a.shape == (4, 3, 48, 320) and a.dtype == np.float32
    assert a.min() >= -1 and a.max() <= 1 and not any(set(t) & set(rd.HOMOGLYPHS) for t in ta)
    p, bp = rd.det_dataset(labels, 2, seed=7, size=160)
    q, bq = rd.det_dataset(labels, 2, seed=7, size=160)
    assert np.array_equal(p, q) and all(np.array_equal(x, y) for x, y in zip(bp, bq)) and p.shape == (2, 3, 160, 160)


def test_method_rows_and_unknown_flags():
    methods = {"a": {"flags": []}, "b": {"flags": [], "budgets": [0.7], "metrics": ["macs"]},
               "c": {"flags": [], "budget": False}}
    assert real_models.rows_for(methods, [0.8, 0.5], ["params"]) == [
        ("a", 0.8, "params"), ("a", 0.5, "params"), ("b", 0.7, "macs"), ("c", None, None)]
    err = "onnx-collapse: error: No such option '--allocation'. Did you mean '--allocator'? (see 'onnx-collapse " \
          "optimize --help')\n"
    assert real_models.unknown_option(err) == "--allocation"
    assert real_models.unknown_option("Error: No such option: --x-y\n") == "--x-y"
    bad = "onnx-collapse: error: Invalid value for '--budget-metric': 'time' is not one of 'params', 'macs'. " \
          "(see 'onnx-collapse optimize --help')"
    assert real_models.unknown_option(bad) == "--budget-metric: 'time' is not one of 'params', 'macs'."
    assert real_models.unknown_option("Error: something else") is None


def test_the_tool_run_is_the_given_checkouts_even_from_another_one(tmp_path, monkeypatch):
    """``--repo-root`` compares checkouts: the optimizer run must be that checkout's package, not the one in the
    working directory (``python -m`` would put the working directory first)."""
    fake = tmp_path / "checkout" / "onnx_collapse"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import sys\nsys.exit(7)\n")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # a checkout with its own onnx_collapse/
    code, _, _, _ = real_models.run_tool(fake.parent, [], tmp_path / "err.txt", 60)
    assert code == 7


def test_ctc_targets_read_back_as_the_text_through_the_tools_accuracy():
    from onnx_collapse.accuracy import unit_correct

    targets = rd.ctc_targets(["ab c", "", "cc"], LABELS)
    assert targets.tolist() == [[1, 2, 4, 3], [-1, -1, -1, -1], [3, 3, -1, -1]]
    # the paths a recogniser would give for those lines, one of them misread ("cc" read as "c")
    paths = np.concatenate([one_hot([1, 0, 2, 4, 3, 3]), one_hot([0, 0, 0, 0, 0, 0]), one_hot([3, 3, 0, 0, 0, 0])])
    right, counted = unit_correct(paths, targets, "ctc")
    assert right.tolist() == [True, True, False] and counted.all()
    assert rd.rec_scores(rd.ctc_greedy(paths, LABELS), ["ab c", "", "cc"])["exact"] == pytest.approx(2 / 3)
