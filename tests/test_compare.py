"""Comparisons of two models' outputs (onnx_collapse.compare): the tolerance rule, NaN and infinity,
per-output tolerances, top-1 agreement, and outputs that differ in kind."""

import numpy as np
import pytest

from onnx_collapse.accuracy import ctc_decode
from onnx_collapse.cli import with_flags
from onnx_collapse.compare import (
    agreement_lower_bound,
    compare,
    compare_outputs,
    compared_elements,
    default_tolerance,
    judge,
    output_mismatches,
    top1_agreement,
    units_needed,
    verdict_text,
)
from onnx_collapse.errors import CollapseError
from onnx_collapse.options import Options


def _sets(**outputs):
    """One input set's outputs, as the runner returns them."""
    return [{name: np.asarray(value) for name, value in outputs.items()}]


def test_default_tolerances_are_by_dtype_and_exact_for_integers():
    assert default_tolerance(np.float32) == (1e-4, 1e-3)
    assert default_tolerance(np.float16) == (1e-2, 1e-2)
    assert default_tolerance(np.int64) == (0.0, 0.0) and default_tolerance(np.bool_) == (0.0, 0.0)


def test_compare_reports_the_smallest_atol_that_would_pass():
    e = np.array([1.0, 2.0, 4.0], np.float32)
    a = e + np.array([0.0, 0.01, -0.02], np.float32)
    stats = compare("y", [e], [a], atol=0.0, rtol=0.0)
    assert not stats.passed and stats.max_abs == pytest.approx(0.02, rel=1e-5)
    assert stats.required_atol == pytest.approx(0.02, rel=1e-5)
    assert compare("y", [e], [a], atol=0.021, rtol=0.0).passed


def test_nan_matches_nan_and_an_inf_itself_but_they_count_as_nothing_compared():
    e = np.array([np.nan, np.inf, 1.0])
    assert compare("y", [e], [e.copy()], 0.0, 0.0).passed
    assert not compare("y", [e], [np.array([np.nan, -np.inf, 1.0])], 0.0, 0.0).passed
    assert compared_elements([e], [e.copy()]) == 1


def test_one_tolerance_holds_every_output():
    expected = _sets(a=[1.0, 2.0], b=[1.0, 2.0])
    actual = _sets(a=[1.0, 2.001], b=[1.0, 2.001])
    result = compare_outputs(expected, actual, 1e-2, 0.0, "random inputs")
    assert result.passed and [s.atol for s in result.outputs] == [1e-2, 1e-2]


def test_an_output_can_be_held_to_a_tighter_tolerance_than_another():
    expected = _sets(a=[1.0, 2.0], b=[1.0, 2.0])
    actual = _sets(a=[1.0, 2.001], b=[1.0, 2.001])  # the same error in both outputs
    result = compare_outputs(expected, actual, {"a": 1e-2, "b": 1e-5}, {"a": 0.0, "b": 0.0}, "random inputs")
    by_name = {s.name: s for s in result.outputs}
    assert by_name["a"].passed and by_name["a"].atol == 1e-2
    assert not by_name["b"].passed and by_name["b"].atol == 1e-5
    assert not result.passed


def test_an_output_left_out_of_a_tolerance_mapping_gets_its_dtype_default():
    expected = _sets(a=np.array([1.0], np.float32), b=np.array([1.0], np.float32))
    result = compare_outputs(expected, expected, {"a": 0.5}, None, "random inputs")
    assert [(s.name, s.atol, s.rtol) for s in result.outputs] == [("a", 0.5, 1e-3), ("b", 1e-4, 1e-3)]


def test_top1_counts_rows_whose_argmax_agrees():
    e = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1], [np.nan, 1.0]])
    a = np.array([[0.0, 1.0], [0.0, 1.0], [0.3, 0.1], [0.0, 1.0]])
    assert top1_agreement([e], [a], "y") == pytest.approx(2 / 3)  # the row holding NaN does not count


def test_top1_errors_name_the_metric_parameter_and_the_cli_its_flag():
    with pytest.raises(CollapseError) as caught:
        top1_agreement([np.zeros((3, 1))], [np.zeros((3, 1))], "y")
    assert str(caught.value).startswith("metric='top1': output 'y' has shape 3x1")
    assert "(use metric='allclose')" in str(caught.value)
    assert with_flags(caught.value).startswith("--metric top1: output 'y' has shape 3x1")
    assert "(use --metric allclose)" in with_flags(caught.value)


def test_a_reference_of_only_nan_is_refused_naming_the_inputs_parameter():
    expected = _sets(y=[np.nan, np.nan])
    with pytest.raises(CollapseError, match=r"give inputs on which it is finite \(inputs\)") as caught:
        compare_outputs(expected, expected, None, None, "random inputs")
    assert with_flags(caught.value).endswith("(--inputs)")


def test_outputs_that_differ_in_kind_fail_and_are_described():
    expected = {"y": np.zeros((2, 3), np.float32), "z": np.zeros(2, np.float32)}
    actual = {"y": np.zeros((3, 2), np.float32)}
    assert output_mismatches(expected, actual) == [
        "output 'y' has shape 2x3 in the reference but 3x2 in the candidate",
        "output 'z' of the reference is not an output of the candidate"]
    result = compare_outputs([expected], [actual], None, None, "random inputs")
    assert not result.passed and all(not s.passed for s in result.outputs)


def test_sequence_agreement_counts_whole_samples():
    """A recogniser's output [samples, positions, classes]: one wrong position makes the whole sample disagree."""
    rng = np.random.default_rng(0)
    want = rng.standard_normal((4, 5, 3))
    got = want.copy()
    got[1, 2] = want[1, 2][::-1] * 10  # sample 1 changes its argmax at one position
    assert top1_agreement([want], [got]) == pytest.approx(19 / 20)
    assert top1_agreement([want], [got], unit="sample") == pytest.approx(3 / 4)
    verdict = compare_outputs([{"y": want}], [{"y": got}], 1e-3, 1e-3, "here", "sequence", 0.75)
    assert verdict.passed and verdict.outputs[0].agreement == pytest.approx(0.75)
    assert "whole-sample" in verdict.inputs
    assert not compare_outputs([{"y": want}], [{"y": got}], 1e-3, 1e-3, "here", "sequence", 0.8).passed


def test_sequence_needs_positions_after_the_samples_axis():
    with pytest.raises(CollapseError, match="sequence"):
        top1_agreement([np.ones(4)], [np.ones(4)], unit="sample")


def test_ctc_agreement_compares_the_decoding_not_the_path():
    """A CTC recogniser [samples, positions, classes], blank 0: a path that moves a character by one position,
    or repeats it, decodes the same; a changed character does not."""
    def onehot(path):
        out = np.full((len(path), 4), -5.0)
        out[np.arange(len(path)), path] = 5.0
        return out

    want = np.stack([onehot([0, 1, 1, 0, 2]), onehot([3, 0, 2, 2, 0]), onehot([1, 0, 1, 0, 0])])
    got = np.stack([onehot([1, 1, 0, 0, 2]), onehot([3, 3, 0, 2, 0]), onehot([1, 1, 1, 0, 0])])
    assert ctc_decode(np.array([0, 1, 1, 0, 1, 2, 2])) == [1, 1, 2]
    assert top1_agreement([want], [got], unit="sample") == 0.0  # every path moved somewhere
    assert top1_agreement([want], [got], unit="ctc") == pytest.approx(2 / 3)  # "1 1" became "1"
    verdict = compare_outputs([{"p": want}], [{"p": got}], 1e-3, 1e-3, "here", "ctc", 0.6)
    assert verdict.passed and "CTC" in verdict.inputs
    with pytest.raises(CollapseError, match="ctc"):
        top1_agreement([np.ones((2, 4))], [np.ones((2, 4))], unit="ctc")


def test_ctc_strip_drops_a_class_only_at_the_ends_of_each_decoding():
    """A recogniser that reads a margin space now and then ("_ab" for "ab", class 3 the space) agrees once
    the space is stripped from both ends; a space inside the text still counts."""
    def onehot(path):
        out = np.full((len(path), 4), -5.0)
        out[np.arange(len(path)), path] = 5.0
        return out

    want = np.stack([onehot([1, 0, 2, 0, 0]), onehot([1, 0, 3, 0, 2]), onehot([1, 0, 2, 0, 3])])
    got = np.stack([onehot([3, 0, 1, 0, 2]), onehot([1, 0, 0, 0, 2]), onehot([1, 0, 2, 0, 0])])
    assert ctc_decode(np.array([3, 0, 3, 1, 0, 3, 2, 3]), strip=(3,)) == [1, 3, 2]
    assert ctc_decode(np.array([3, 3, 0]), strip=(3,)) == []
    assert top1_agreement([want], [got], unit="ctc") == 0.0
    assert top1_agreement([want], [got], unit="ctc", strip=(3,)) == pytest.approx(2 / 3)  # not the inner space
    assert not compare_outputs([{"p": want}], [{"p": got}], 1e-3, 1e-3, "here", "ctc", 0.6).passed
    verdict = judge([{"p": want}], [{"p": got}], "here", Options(metric="ctc", min_agreement=0.6, ctc_strip=(3,)))
    assert verdict.passed and "class 3 stripped from both ends" in verdict.inputs


def test_statistics_taken_a_slice_at_a_time_equal_those_of_the_whole(monkeypatch):
    from onnx_collapse import compare as module

    rng = np.random.default_rng(3)
    expected = [rng.standard_normal((7, 11)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    actual = [e + rng.standard_normal(e.shape).astype(np.float32) * 1e-3 for e in expected]
    expected[0][2, 3], actual[0][2, 3] = np.nan, np.nan  # a matching NaN in the middle of a slice
    actual[1][4] = np.inf  # the worst element in the last slice of the last set
    whole = compare("y", expected, actual)
    monkeypatch.setattr(module, "CHUNK", 4)
    sliced = compare("y", expected, actual)
    assert sliced == whole
    assert whole.max_abs == np.inf and not whole.passed


def test_a_ctc_strip_class_the_output_does_not_have_is_refused():
    scores = np.zeros((2, 4, 5), np.float32)
    with pytest.raises(CollapseError, match="ctc_strip names class 7, but output 'p' has 5 classes"):
        judge([{"p": scores}], [{"p": scores}], "here", Options(metric="ctc", ctc_strip=(4, 7)))


def _wilson_root(same: int, total: int, z: float) -> float:
    """The Wilson lower bound by its definition: the rate p below the measured one at which the measured rate
    is z standard errors sqrt(p (1 - p) / n) above p, found by bisection."""
    rate, lo, hi = same / total, 0.0, same / total
    for _ in range(200):
        mid = (lo + hi) / 2
        if rate - mid > z * np.sqrt(mid * (1 - mid) / total):
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize("same,total,confidence,z", [(97, 100, 0.9, 1.2815516), (465, 480, 0.95, 1.6448536),
                                                       (30, 30, 0.9, 1.2815516), (0, 12, 0.8, 0.8416212)])
def test_agreement_lower_bound_is_the_wilson_score_bound(same, total, confidence, z):
    bound = agreement_lower_bound(same, total, confidence)
    assert bound == pytest.approx(_wilson_root(same, total, z), abs=1e-6)
    assert 0.0 <= bound <= same / total
    assert agreement_lower_bound(same, total, 0.5) == pytest.approx(same / total)  # the median: the rate itself


def test_agreement_lower_bound_tightens_with_more_rows():
    bounds = [agreement_lower_bound(97 * k, 100 * k, 0.9) for k in (1, 4, 16)]
    assert bounds == sorted(bounds) and bounds[-1] < 0.97 and 0.97 - bounds[-1] < 0.01


def test_confidence_judges_the_agreement_by_its_lower_bound():
    want = np.zeros((100, 3), np.float32)
    want[:, 1] = 1.0
    got = want.copy()
    got[:3] = [1.0, 0.0, 0.0]  # 97 of 100 rows agree
    plain = compare_outputs(_sets(y=want), _sets(y=got), None, None, "x", metric="top1", min_agreement=0.95)
    bounded = compare_outputs(_sets(y=want), _sets(y=got), None, None, "x", metric="top1", min_agreement=0.95,
                              confidence=0.9)
    assert plain.passed and plain.outputs[0].agreement_bound is None
    assert not bounded.passed  # 97 % measured, but only 93.9 % at 90 % confidence on 100 rows
    assert bounded.outputs[0].agreement == pytest.approx(0.97)
    assert bounded.outputs[0].agreement_bound == pytest.approx(0.9394, abs=1e-4)
    assert "agreement (its 90% lower bound) >= 95%" in bounded.inputs
    assert judge(_sets(y=want), _sets(y=got), "x", Options(metric="top1", min_agreement=0.93, confidence=0.9)).passed


@pytest.mark.parametrize("value", [0.3, 1.0, float("nan"), "high"])
def test_confidence_outside_half_to_one_is_refused(value):
    with pytest.raises(CollapseError, match="confidence"):
        Options(metric="top1", confidence=value)


def test_min_agreement_one_with_confidence_is_refused():
    with pytest.raises(CollapseError, match="can never pass"):
        Options(metric="top1", min_agreement=1.0, confidence=0.9)
    assert Options(metric="top1", min_agreement=1.0, confidence=0.5).confidence == 0.5  # the rate itself


def test_verdict_text_names_the_worst_output():
    want = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 5]
    worse, bad = want.copy(), want.copy()
    worse[:12] = want[0]  # 11 of 20 rows agree (rows 0, 4 and 8 already point at class 0)
    bad[:6] = want[0]  # 16 of 20
    verdict = compare_outputs(_sets(a=want, b=want, c=want), _sets(a=bad, b=worse, c=want), None, None, "x",
                              metric="top1", min_agreement=0.9)
    assert verdict_text(verdict) == "agreement 55.0% failed"
    bounded = compare_outputs(_sets(a=want), _sets(a=bad), None, None, "x", metric="top1", min_agreement=0.5,
                              confidence=0.9)
    assert verdict_text(bounded).startswith("agreement 80.0% (bound ") and bounded.passed


@pytest.mark.parametrize("target,confidence", [(0.99, 0.9), (0.95, 0.9), (0.97, 0.95), (0.5, 0.8)])
def test_units_needed_is_the_fewest_that_can_show_the_target(target, confidence):
    n = units_needed(target, confidence)
    assert agreement_lower_bound(n, n, confidence) >= target
    assert n == 1 or agreement_lower_bound(n - 1, n - 1, confidence) < target


def test_too_few_rows_for_the_bound_are_named_in_the_verdict():
    want = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 4]  # 16 rows, all agreeing
    verdict = compare_outputs(_sets(y=want), _sets(y=want), None, None, "x", metric="top1", min_agreement=0.99,
                              confidence=0.9)
    assert not verdict.passed and verdict.outputs[0].agreement == 1.0
    assert verdict.problems == ["output 'y': at --confidence 0.9, 16 rows cannot show 99% agreement (all of them "
                                "agreeing give a bound of 90.7%); it needs at least 163"]
    enough = compare_outputs(_sets(y=want), _sets(y=want), None, None, "x", metric="top1", min_agreement=0.9,
                             confidence=0.9)
    assert enough.passed and not enough.problems


def _split(values: dict, parts: int) -> list[dict]:
    """One input set of ``values`` cut into ``parts`` sets along axis 0."""
    return [{name: v[k::parts] for name, v in values.items()} for k in range(parts)]


@pytest.mark.parametrize("metric", ["allclose", "top1", "ctc"])
def test_statistics_merged_set_by_set_equal_those_of_one_set(metric):
    rng = np.random.default_rng(3)
    want = rng.normal(size=(24, 9, 5)).astype(np.float32)
    got = want + rng.normal(scale=0.3, size=want.shape).astype(np.float32)
    got[5] = np.nan  # a row that fails everywhere, and a NaN the reference has too
    want[7, 0, 0] = got[7, 0, 0] = np.nan
    whole = compare_outputs([{"y": want}], [{"y": got}], 1e-3, 1e-3, "x", metric, 0.5, confidence=0.9)
    merged = compare_outputs(_split({"y": want}, 5), _split({"y": got}, 5), 1e-3, 1e-3, "x", metric, 0.5,
                             confidence=0.9)
    one, many = whole.outputs[0], merged.outputs[0]
    assert (one.max_abs, one.max_rel, one.required_atol, one.passed) == \
        (many.max_abs, many.max_rel, many.required_atol, many.passed)
    assert many.mean_abs == pytest.approx(one.mean_abs, rel=1e-12)
    assert (one.agreement, one.agreement_bound) == (many.agreement, many.agreement_bound)
    assert merged.n_input_sets == 5 and whole.n_input_sets == 1


def test_a_comparison_holds_one_input_set_at_a_time():
    """Given iterables, compare_outputs takes each set's outputs as they come and keeps none of them, so
    neither model's outputs for all the verification rows are in memory together."""
    import gc
    import weakref

    def sets():
        alive: list[weakref.ref] = []
        for k in range(6):
            gc.collect()  # the set before this one may still be the comparison's loop variable; no older one
            assert sum(r() is not None for r in alive) <= 1, "earlier sets are still held"
            values = {"y": np.full((4, 3), float(k))}
            alive.append(weakref.ref(values["y"]))
            yield values
            del values

    verdict = compare_outputs(sets(), sets(), None, None, "x")
    assert verdict.passed and verdict.n_input_sets == 6


def test_names_add_the_first_sets_kind_mismatches_to_the_problems():
    verdict = compare_outputs(_sets(y=np.zeros((2, 3))), _sets(y=np.zeros((3, 3))), None, None, "x",
                              names=("the original model", "the pruned model"))
    assert not verdict.passed
    assert verdict.problems == ["output 'y' has shape 2x3 in the original model but 3x3 in the pruned model"]


def test_an_output_missing_from_a_later_set_fails_and_zero_sets_are_refused():
    want = {"y": np.zeros((2, 3)), "z": np.ones(2)}
    verdict = compare_outputs([want, want], [want, {"y": np.zeros((2, 3))}], None, None, "x")
    assert not verdict.passed and [s.passed for s in verdict.outputs] == [True, False]
    assert verdict.outputs[1].max_abs == float("inf")
    with pytest.raises(CollapseError, match="no input set"):
        compare_outputs([], [], None, None, "x")
