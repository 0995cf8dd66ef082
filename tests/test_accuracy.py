"""Accuracy against true labels (--labels, --max-drop): units read right as a person would count them, the
drop's bound covers the true drop as often as it says, set-by-set counts equal one set's, searches keep a
model whose drop is within the target, and bad labels are one line."""

import numpy as np
import pytest

from onnx_collapse import optimize
from onnx_collapse.accuracy import drop_upper_bound, unit_correct
from onnx_collapse.compare import compare_outputs, verdict_text
from onnx_collapse.errors import CollapseError
from onnx_collapse.options import Options
from onnx_collapse.runner import run_scratch
from tests.builders import decaying_classifier, run_model
from tests.common import assert_one_line_error, cli


def _scores(classes: list[list[int]], n_classes: int = 4) -> np.ndarray:
    """Scores whose argmax along the last axis is ``classes`` (one row per sample, one column per position)."""
    classes = np.asarray(classes)
    out = np.zeros((*classes.shape, n_classes), np.float32)
    np.put_along_axis(out, classes[..., None], 1.0, axis=-1)
    return out


def test_rows_are_right_where_the_argmax_is_the_label_and_negative_labels_do_not_count():
    scores = _scores([[1], [2], [3], [0]])[:, 0]  # four rows of 4 classes
    right, counted = unit_correct(scores, np.array([1, 0, 3, -1]), "row")
    assert right.tolist() == [True, False, True, False] and counted.tolist() == [True, True, True, False]


def test_a_sample_is_right_when_every_labelled_position_is():
    scores = _scores([[1, 2, 3], [1, 2, 3], [1, 1, 1]])
    right, counted = unit_correct(scores, np.array([[1, 2, 3], [1, 2, -1], [-1, -1, -1]]), "sample")
    assert right.tolist() == [True, True, False] and counted.tolist() == [True, True, False]
    wrong, _ = unit_correct(scores, np.array([[1, 2, 0], [1, 3, -1], [1, 1, 1]]), "sample")
    assert wrong.tolist() == [False, False, True]


def test_ctc_samples_are_right_when_the_decoding_is_the_label_sequence():
    # paths: "1 1 0 2" reads [1, 2]; "3 1 0 1" reads [3, 1, 1]; "0 0 0 0" reads []
    scores = _scores([[1, 1, 0, 2], [3, 1, 0, 1], [0, 0, 0, 0]])
    labels = np.array([[1, 2, -1], [1, 1, -1], [-1, -1, -1]])
    right, counted = unit_correct(scores, labels, "ctc")
    assert right.tolist() == [True, False, True] and counted.all()
    # class 3 as a space dropped from both ends: the second path reads [1, 1], as its label does
    assert unit_correct(scores, labels, "ctc", strip=(3,))[0].tolist() == [True, True, True]
    assert unit_correct(scores, np.array([[3, 1, 2], [1, 1, 3], [3, -1, -1]]), "ctc", strip=(3,))[0].all()


def test_non_finite_units_are_wrong():
    scores = _scores([[1], [1]])[:, 0]
    scores[1, 0] = np.nan
    assert unit_correct(scores, np.array([1, 1]), "row")[0].tolist() == [True, False]


def test_labels_of_the_wrong_shape_or_with_the_blank_are_refused():
    with pytest.raises(CollapseError, match=r"labels.*'y'.*need shape 3x4, but they have 3"):
        unit_correct(_scores([[1, 2, 3, 0]] * 3), np.array([1, 2, 3]), "sample", name="y")
    with pytest.raises(CollapseError, match="class 0.*blank"):
        unit_correct(_scores([[1, 1]]), np.array([[1, 0]]), "ctc")
    with pytest.raises(CollapseError, match=r"'y' has 4 classes \(0 to 3\), but its labels hold class 7"):
        unit_correct(_scores([[1], [2]])[:, 0], np.array([1, 7]), "row", name="y")


def test_drop_bound_is_at_least_the_drop_and_tightens_with_rows():
    assert drop_upper_bound(10, 2, 100, 0.9) >= 0.08
    assert drop_upper_bound(100, 20, 1000, 0.9) < drop_upper_bound(10, 2, 100, 0.9)
    assert drop_upper_bound(0, 0, 1000, 0.9) > 0  # nothing changed on these rows, but unseen rows may
    assert drop_upper_bound(5, 5, 1000, 0.5) == pytest.approx(0.0, abs=1e-12)
    assert drop_upper_bound(1, 0, 1, 0.999) == drop_upper_bound(2, 0, 2, 0.99) == 1.0  # never above one


@pytest.mark.parametrize(("p_worse", "p_better", "n"), [(0.03, 0.01, 500), (0.01, 0.01, 300), (0.05, 0.0, 200)])
def test_drop_bound_covers_the_true_drop_as_often_as_its_confidence_says(p_worse, p_better, n):
    rng = np.random.default_rng(0)
    trials, covered = 4000, 0
    for _ in range(trials):
        worse, better, _ = rng.multinomial(n, [p_worse, p_better, 1 - p_worse - p_better])
        covered += drop_upper_bound(int(worse), int(better), n, 0.9) >= p_worse - p_better
    assert 0.87 <= covered / trials <= 0.97  # about 90 %, not the 50 % of the measured drop itself


def _pair(ref_classes, cand_classes):
    return [{"y": _scores(ref_classes)[:, 0]}], [{"y": _scores(cand_classes)[:, 0]}]


def test_max_drop_judges_by_accuracy_and_still_reports_agreement():
    truth = np.array([0, 1, 2, 3] * 25)
    ref = truth.copy()
    ref[:10] = (ref[:10] + 1) % 4  # the reference reads 90 %
    cand = ref.copy()
    cand[10:13] = (cand[10:13] + 1) % 4  # three more wrong: 87 %
    cand[:2] = truth[:2]  # and two of its mistakes right: 89 %, agreement 95 %
    expected, actual = _pair(ref[:, None], cand[:, None])
    kw = dict(atol=None, rtol=None, source="rows", metric="top1", min_agreement=0.99, labels={"y": truth})
    stat = compare_outputs(expected, actual, **kw).outputs[0]
    assert (stat.accuracy, stat.reference_accuracy, stat.agreement) == (0.89, 0.90, 0.95)
    assert not stat.passed  # no max_drop: judged by agreement (95 % < 99 %), accuracy only reported
    passed = compare_outputs(expected, actual, **kw, max_drop=0.01)
    assert passed.passed and passed.outputs[0].accuracy_drop == pytest.approx(0.01)
    assert "accuracy against the labels at most 1 point(s) below" in passed.inputs
    assert not compare_outputs(expected, actual, **kw, max_drop=0.005).passed
    bounded = compare_outputs(expected, actual, **kw, max_drop=0.01, confidence=0.9)
    assert not bounded.passed and bounded.outputs[0].accuracy_drop_bound > 0.01
    assert "accuracy 89.0% against 90.0% (drop 1, bound" in verdict_text(bounded)


def test_labels_split_over_input_sets_count_as_one_set():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, 60)
    ref, cand = truth.copy(), truth.copy()
    ref[rng.choice(60, 9, replace=False)] = 0
    cand[rng.choice(60, 12, replace=False)] = 1
    (e,), (a,) = _pair(ref[:, None], cand[:, None])
    kw = dict(atol=None, rtol=None, source="rows", metric="top1", labels={"y": truth}, max_drop=0.05)
    whole = compare_outputs([e], [a], **kw).outputs[0]
    sets = [(0, 7), (7, 40), (40, 60)]
    parts = compare_outputs([{"y": e["y"][i:j]} for i, j in sets], [{"y": a["y"][i:j]} for i, j in sets],
                            confidence=0.9, **kw)
    bounded = compare_outputs([e], [a], confidence=0.9, **kw).outputs[0]
    assert (parts.outputs[0].accuracy, parts.outputs[0].reference_accuracy) == (whole.accuracy, whole.reference_accuracy)
    assert parts.outputs[0].accuracy_drop_bound == bounded.accuracy_drop_bound  # the same rows changed, counted once
    assert parts.n_input_sets == 3


def test_a_run_judges_every_verification_by_the_labels_it_read_first(tmp_path):
    truth = np.array([0, 1, 2, 3] * 5)
    path = tmp_path / "labels.npz"
    np.savez(path, y=truth)
    expected, actual = _pair(truth[:, None], truth[:, None])
    kw = dict(atol=None, rtol=None, source="rows", metric="top1", labels=path, max_drop=0.0)
    with run_scratch():
        assert compare_outputs(expected, actual, **kw).outputs[0].accuracy == 1.0
        np.savez(path, y=(truth + 1) % 4)  # the file changes while the run goes on
        assert compare_outputs(expected, actual, **kw).outputs[0].accuracy == 1.0
    assert compare_outputs(expected, actual, **kw).outputs[0].accuracy == 0.0  # a new run reads it again


def test_ctc_samples_are_counted_against_their_labels_through_the_comparison():
    ref = _scores([[1, 1, 0, 2], [3, 0, 3, 1], [1, 2, 2, 0]])  # reads [1, 2], [3, 3, 1], [1, 2]
    cand = _scores([[1, 0, 0, 2], [3, 3, 0, 1], [1, 1, 2, 2]])  # reads [1, 2], [3, 1], [1, 2]
    truth = np.array([[1, 2, -1], [3, 1, -1], [1, 2, 2]])
    stat = compare_outputs([{"y": ref}], [{"y": cand}], None, None, "lines", metric="ctc", labels={"y": truth},
                           max_drop=0.0).outputs[0]
    assert (stat.reference_accuracy, stat.accuracy) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert stat.agreement == pytest.approx(2 / 3) and stat.passed  # the candidate reads one line more right


def test_a_candidate_whose_output_changes_shape_fails_whatever_its_accuracy():
    truth = np.array([1, 2, 3, 0])
    e = {"y": _scores([[1], [2], [3], [0]])[:, 0]}
    wrong = {"y": np.zeros((4, 5), np.float32)}
    verdict = compare_outputs([e, e], [e, wrong], None, None, "rows", metric="top1",
                              labels={"y": np.concatenate([truth, truth])}, max_drop=1.0)
    assert not verdict.passed and verdict.outputs[0].accuracy == 0.5


def test_label_rows_must_be_the_verification_rows():
    expected, actual = _pair([[1]] * 10, [[1]] * 10)
    kw = dict(atol=None, rtol=None, source="rows", metric="top1", max_drop=0.01)
    with pytest.raises(CollapseError, match="12 rows, but verification ran 10"):
        compare_outputs(expected, actual, labels={"y": np.ones(12, np.int64)}, **kw)
    with pytest.raises(CollapseError, match="8 rows, fewer than the verification rows"):
        compare_outputs(expected, actual, labels={"y": np.ones(8, np.int64)}, **kw)
    with pytest.raises(CollapseError, match="'z', which is not a model output"):
        compare_outputs(expected, actual, labels={"z": np.ones(10, np.int64)}, **kw)
    with pytest.raises(CollapseError, match="'y' is float64; labels are integer"):
        compare_outputs(expected, actual, labels={"y": np.ones(10)}, **kw)


def test_options_refuse_labels_they_cannot_read():
    with pytest.raises(CollapseError, match="max_drop judges accuracy against the true labels: give labels"):
        Options(max_drop=0.01)
    with pytest.raises(CollapseError, match="labels are read by argmax"):
        Options(labels="y.npz", inputs="x.npz")
    with pytest.raises(CollapseError, match="labels label the rows of inputs"):
        Options(labels="y.npz", metric="top1")
    with pytest.raises(CollapseError, match="max_drop must be a fraction"):
        Options(labels="y.npz", inputs="x.npz", metric="top1", max_drop=2)


def _classifier_data(n_calib=200, n_held=400, wrong=0.1, seed=5):
    """Calibration and held-out rows for ``decaying_classifier``, and held-out labels that the original reads
    right on 1 - ``wrong`` of the rows (its argmax elsewhere moved by one class)."""
    rng = np.random.default_rng(seed)
    calib, held = (rng.standard_normal((n, 32)).astype(np.float32) for n in (n_calib, n_held))
    truth = run_model(decaying_classifier(), x=held)[0].argmax(axis=1)
    flip = rng.random(n_held) < wrong
    truth[flip] = (truth[flip] + 1) % 10
    return calib, held, truth


def _accuracy(model, x, truth) -> float:
    return float((run_model(model, x=x)[0].argmax(axis=1) == truth).mean())


def test_rank_budget_auto_keeps_the_smallest_model_within_the_accuracy_drop():
    calib, held, truth = _classifier_data()
    kw = dict(low_rank="all", rank_budget="auto", allocator="alds", calibrate={"x": calib}, inputs={"x": held},
              metric="top1", labels={"y": truth})
    out, report = optimize(decaying_classifier(), max_drop=0.1, **kw)
    stat = report.verification.outputs[0]
    assert report.verification.passed and report.after.params < report.before.params
    # the accuracies reported are what onnxruntime gives the two models on the held-out rows
    assert stat.reference_accuracy == pytest.approx(_accuracy(decaying_classifier(), held, truth))
    assert stat.accuracy == pytest.approx(_accuracy(out, held, truth))
    assert 0 < stat.reference_accuracy - stat.accuracy <= 0.1
    # a tighter target keeps more weights; the bound asks for more than the measured drop
    _, tight = optimize(decaying_classifier(), max_drop=0.05, **kw)
    _, bounded = optimize(decaying_classifier(), max_drop=0.1, confidence=0.9, **kw)
    assert report.before.params > tight.after.params > report.after.params
    assert report.before.params > bounded.after.params > report.after.params
    assert bounded.verification.outputs[0].accuracy_drop_bound <= 0.1
    search = next(n for n in bounded.notes if n.startswith("budget search"))
    assert search.count("accuracy ") == 6 and "bound" in search


def test_cli_verify_reads_labels_and_judges_the_drop(tmp_path):
    calib, held, truth = _classifier_data()
    model, data, labels = tmp_path / "m.onnx", tmp_path / "x.npz", tmp_path / "y.npz"
    import onnx

    onnx.save(decaying_classifier(), model)
    np.savez(data, x=held)
    np.savez(labels, y=truth)
    small = tmp_path / "small.onnx"
    out, _ = optimize(decaying_classifier(), low_rank="all", rank_budget=0.6, verify=False)
    onnx.save(out, small)
    drop = _accuracy(decaying_classifier(), held, truth) - _accuracy(out, held, truth)
    assert drop > 0.005
    args = ["verify", str(model), str(small), "--inputs", str(data), "--metric", "top1", "--labels", str(labels)]
    ok = cli(*args, "--max-drop", f"{drop + 0.001:.4f}")
    assert ok.returncode == 0, ok.stderr
    reference = 100 * _accuracy(decaying_classifier(), held, truth)
    assert f"({reference:.2f}%)" in ok.stdout and f"{100 * drop:.2f} pt" in ok.stdout
    failed = cli(*args, "--max-drop", f"{drop - 0.004:.4f}")
    assert failed.returncode == 1 and "FAIL" in failed.stdout
    before = labels.read_bytes()
    floats = tmp_path / "f.npz"
    np.savez(floats, y=truth.astype(np.float32))
    assert_one_line_error(cli(*args[:-1], str(floats), "--max-drop", "0.01"), 2, "--labels", "integer")
    assert_one_line_error(cli("verify", str(model), str(small), "--metric", "top1", "--labels", str(labels)), 2,
                          "--labels", "--inputs")
    assert labels.read_bytes() == before



@pytest.fixture
def classifier_files(tmp_path):
    import onnx

    _, held, truth = _classifier_data(n_held=40)
    model, data, labels = tmp_path / "m.onnx", tmp_path / "x.npz", tmp_path / "y.npz"
    onnx.save(decaying_classifier(), model)
    np.savez(data, x=held)
    np.savez(labels, y=truth)
    return model, data, labels


def test_the_labels_file_is_never_the_output(classifier_files):
    model, data, labels = classifier_files
    before = labels.read_bytes()
    result = cli("optimize", model, labels, "--inputs", data, "--metric", "top1", "--labels", labels, "--overwrite")
    assert_one_line_error(result, 2, "--labels")
    assert labels.read_bytes() == before


def test_a_fifo_or_npy_as_labels_is_refused_without_blocking(classifier_files, tmp_path):
    import os

    model, data, labels = classifier_files
    fifo, npy = tmp_path / "pipe.npz", tmp_path / "y.npy"
    os.mkfifo(fifo)
    np.save(npy, np.zeros(40, np.int64))
    for bad, words in ((fifo, ("not a regular file",)), (npy, (".npy", "np.savez"))):
        result = cli("optimize", model, tmp_path / "o.onnx", "--inputs", data, "--metric", "top1", "--labels", bad)
        assert_one_line_error(result, 2, "--labels", *words)
        assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(("labels", "words"), [
    (dict(logits=np.zeros(40, np.int64)), ("'logits', which is not a model output",)),
    (dict(y=np.zeros(30, np.int64)), ("'y' has 30 rows, but --inputs has 40",)),
    (dict(k=np.zeros(40, np.int64)), ("'k', which is not a float tensor of scores",)),
])
def test_labels_that_cannot_fit_are_refused_before_any_work(classifier_files, tmp_path, labels, words):
    import onnx
    from onnx import TensorProto, helper

    model, data, _ = classifier_files
    with_index = onnx.load(model)  # a second output: the class index, an integer
    with_index.graph.node.append(helper.make_node("ArgMax", ["y"], ["k"], axis=1, keepdims=0))
    with_index.graph.output.append(helper.make_tensor_value_info("k", TensorProto.INT64, ["N"]))
    onnx.save(with_index, model)
    wrong, calib = tmp_path / "wrong.npz", tmp_path / "calib.npz"
    np.savez(wrong, **labels)
    np.savez(calib, not_an_input=np.zeros((40, 32), np.float32))  # calibrating would fail: it is never read
    for command in (["optimize", model, tmp_path / "o.onnx", "--calibrate", calib, "--low-rank", "all",
                     "--rank-budget", "0.5"], ["verify", model, model]):
        result = cli(*command, "--inputs", data, "--metric", "top1", "--labels", wrong, "--max-drop", "0.01")
        assert_one_line_error(result, 2, "--labels", *words)


def test_labels_of_an_output_that_is_not_scores_are_refused_by_name():
    ids = [{"ids": np.array([[1, 2], [3, 0]], np.int64)}]
    with pytest.raises(CollapseError, match="labels output 'ids', which is not an array of scores"):
        compare_outputs(ids, ids, None, None, "rows", metric="top1", labels={"ids": np.array([[1, 2], [3, 0]])},
                        max_drop=0.01)
