"""The optimizer over every model-with-reference-data the installed onnx package ships: no crash, no mismatch."""


import pytest
from corpus import run_corpus

pytestmark = pytest.mark.slow


def test_onnx_backend_corpus_has_no_crash_and_no_mismatch(capsys):
    summary = run_corpus()
    with capsys.disabled():
        print("\n" + summary.line())
    assert summary.run > 1000, summary.line()
    assert not summary.crashes, summary.crashes[:3]
    assert not summary.mismatches, summary.mismatches[:5]
    assert not summary.errors, summary.errors[:5]
