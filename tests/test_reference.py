"""optimize --reference: verification (and the budget search) judged against an earlier model's outputs,
so that a criterion holds for a two-step recipe (prune, then truncate) as a whole."""

import importlib
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_collapse import optimize, verify
from onnx_collapse.errors import CollapseError
from tests.builders import decaying_classifier
from tests.common import assert_one_line_error, cli


def _perturbed(model: onnx.ModelProto, scale: float) -> onnx.ModelProto:
    """``model`` with seeded noise on its second weight: a stand-in for an earlier lossy step."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    w2 = numpy_helper.to_array(out.graph.initializer[1])
    noisy = w2 + scale * w2.std() * np.random.default_rng(9).standard_normal(w2.shape)
    out.graph.initializer[1].CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), "w2"))
    return out


def _rows():
    rng = np.random.default_rng(5)
    return ({"x": rng.standard_normal((n, 32)).astype(np.float32)} for n in (200, 100))


def _auto(model, reference=None, **kw):
    calib, held = _rows()
    return optimize(model, low_rank="all", rank_budget="auto", calibrate=calib, inputs=held, metric="top1",
                    min_agreement=0.9, reference=reference, **kw)


def test_the_budget_search_meets_the_target_against_the_reference():
    original = decaying_classifier()
    step1 = _perturbed(original, 0.1)  # agrees with the original on about 92 % of the held-out rows
    _, held = _rows()

    def agreement(model):
        return verify(original, model, inputs=held, metric="top1").outputs[0].agreement

    assert 0.9 < agreement(step1) < 0.95
    alone, _ = _auto(step1)  # judged against step1 only: the two losses add up past the target
    assert agreement(alone) < 0.9
    out, report = _auto(step1, reference=original)
    assert report.verification.passed and agreement(out) >= 0.9
    assert report.after.params < report.before.params  # still truncated, just less
    assert "compared with the reference model" in report.verification.inputs
    assert any(n.startswith("budget search") and "compared with the reference" in n for n in report.notes)


def test_the_reference_runs_once_per_run_and_every_check_judges_by_its_outputs(tmp_path, monkeypatch):
    verification = importlib.import_module("onnx_collapse.verify")  # the module (onnx_collapse.verify is the function)
    original, runs = decaying_classifier(), []
    onnx.save(original, str(tmp_path / "ref.onnx"))
    real = verification.iter_outputs

    def counted(source, feeds, what, *args, **kw):
        runs.append(what)
        return real(source, feeds, what, *args, **kw)

    monkeypatch.setattr(verification, "iter_outputs", counted)
    out, report = _auto(_perturbed(original, 0.1), reference=tmp_path / "ref.onnx")
    # the input's check, the budget search and the final verification: one run of the reference between them
    assert runs.count("reference model") == 1 and runs.count("input model") == 1
    assert report.verification.passed
    _, held = _rows()
    assert verify(original, out, inputs=held, metric="top1").outputs[0].agreement >= 0.9
    _auto(_perturbed(original, 0.1), reference=tmp_path / "ref.onnx")
    assert runs.count("reference model") == 2  # a new run, a new run of the reference (its folder was removed)


def test_an_input_that_already_fails_against_the_reference_is_refused_and_not_written(tmp_path):
    original, step1 = tmp_path / "original.onnx", tmp_path / "step1.onnx"
    onnx.save(decaying_classifier(), original)
    onnx.save(_perturbed(decaying_classifier(), 0.3), step1)  # agrees on about 68 %
    calib, held = _rows()
    np.savez(tmp_path / "calib.npz", **calib)
    np.savez(tmp_path / "held.npz", **held)
    out = tmp_path / "out.onnx"
    result = cli("optimize", step1, out, "--low-rank", "all", "--rank-budget", "auto", "--calibrate",
                 tmp_path / "calib.npz", "--inputs", tmp_path / "held.npz", "--metric", "top1", "--min-agreement",
                 "0.9", "--reference", original, "--quiet")
    assert_one_line_error(result, 2, "the input model itself fails verification against --reference",
                          "agreement 68.0% failed")
    assert not out.exists()


def test_a_reference_with_other_outputs_is_refused_before_any_work(tmp_path):
    other = decaying_classifier()
    other.graph.output[0].name = "logits"
    other.graph.node[-1].output[0] = "logits"
    with pytest.raises(CollapseError, match="reference.*'logits'"):
        _auto(decaying_classifier(), reference=other)
    model, ref = tmp_path / "m.onnx", tmp_path / "ref.onnx"
    onnx.save(decaying_classifier(), model)
    onnx.save(other, ref)
    assert_one_line_error(cli("optimize", model, tmp_path / "o.onnx", "--reference", ref), 2, "--reference",
                          "'logits'")
    assert_one_line_error(cli("optimize", model, tmp_path / "o.onnx", "--reference", tmp_path / "missing.onnx"),
                          2, "--reference: ", "missing.onnx")
    assert cli("optimize", model, tmp_path / "o.onnx", "--no-verify", "--reference", ref).returncode == 0  # idle


def test_the_output_may_not_replace_the_reference(tmp_path):
    model, ref = tmp_path / "m.onnx", tmp_path / "ref.onnx"
    onnx.save(decaying_classifier(), model)
    onnx.save(decaying_classifier(), ref)
    before = ref.read_bytes()
    assert_one_line_error(cli("optimize", model, ref, "--reference", ref, "--overwrite"), 2, "reference")
    assert ref.read_bytes() == before


def test_reference_is_idle_without_verification(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(decaying_classifier(), model)
    result = cli("optimize", model, tmp_path / "o.onnx", "--no-verify", "--reference", model)
    assert result.returncode == 0 and "--reference" in result.stderr and "--no-verify" in result.stderr


def test_replacing_an_output_keeps_the_data_file_the_reference_reads(tmp_path):
    """ref.onnx is a copy of an earlier output and reads that output's data file: writing the output again
    must not delete the file as the old output's own stale data."""
    model, out, ref = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "ref.onnx"
    onnx.save(decaying_classifier(), model)
    assert cli("optimize", model, out, "--external-data", "--quiet").returncode == 0
    shutil.copy(out, ref)
    data = [p for p in tmp_path.iterdir() if p.name.endswith(".data")]
    assert len(data) == 1
    result = cli("optimize", model, out, "--external-data", "--reference", ref, "--quiet")
    assert result.returncode == 0, result.stderr
    assert data[0].exists()
    _, held = _rows()
    assert verify(str(ref), str(out), inputs=held).passed  # both still load and run


def _recogniser(last_class: int) -> onnx.ModelProto:
    """x [N, 6, 5] -> per-timestep scores whose last timestep is forced to ``last_class`` (0: the blank)."""
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        rec (float[N, 6, 5] x) => (float[N, 6, 5] y) {
            m = Mul (x, mask)
            y = Add (m, bump)
        }""")
    mask, bump = np.ones((6, 5), np.float32), np.zeros((6, 5), np.float32)
    mask[-1] = 0
    bump[-1, last_class] = 10
    model.graph.initializer.extend([numpy_helper.from_array(mask, "mask"), numpy_helper.from_array(bump, "bump")])
    return model


def test_ctc_strip_reaches_every_check_of_a_run(tmp_path):
    """Two recognisers that differ only by a trailing space (class 4): judged with the space stripped they
    agree, in verify, in the check of an input against optimize's and prune's --reference."""
    a, b, rows, calib = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "rows.npz", tmp_path / "calib.npz"
    onnx.save(_recogniser(0), a)
    onnx.save(_recogniser(4), b)
    for path, seed in ((rows, 0), (calib, 1)):
        np.savez(path, x=np.random.default_rng(seed).standard_normal((40, 6, 5)).astype(np.float32))
    ctc = ["--inputs", rows, "--metric", "ctc", "--min-agreement", "1"]
    assert cli("verify", a, b, *ctc, "--quiet").returncode == 1
    assert cli("verify", a, b, *ctc, "--ctc-strip", "4", "--quiet").returncode == 0
    assert_one_line_error(cli("optimize", b, tmp_path / "o.onnx", *ctc, "--reference", a), 2, "itself fails")
    result = cli("optimize", b, tmp_path / "o.onnx", *ctc, "--ctc-strip", "4", "--reference", a, "--quiet")
    assert result.returncode == 0, result.stderr
    assert_one_line_error(cli("prune", b, tmp_path / "p.onnx", "--calibrate", calib, *ctc, "--reference", a), 2,
                          "itself fails")
    result = cli("prune", b, tmp_path / "p.onnx", "--calibrate", calib, *ctc, "--ctc-strip", "4", "--reference", a,
                 "--quiet")
    assert result.returncode == 0, result.stderr
