"""The one user-facing exception: parameter mentions the API says by name and the CLI by flag; one-line text."""

from __future__ import annotations

import pytest

from onnx_collapse.cli import flag
from onnx_collapse.errors import CollapseError, Param, one_line, text


def test_a_message_names_parameters_by_name_and_renders_them_by_flag():
    err = CollapseError(Param("input_shapes"), " names 'y'; give ", Param("verify", False), (" or ", Param("inputs")))
    assert str(err) == "input_shapes names 'y'; give verify=False or inputs"
    assert err.params == (Param("input_shapes"), Param("verify", False), Param("inputs"))
    assert err.render(flag) == "--input-shape names 'y'; give --no-verify or --inputs"
    assert text("a ", Param("metric", "top1")) == "a metric='top1'"
    assert err.prefixed("cannot run: ").render(flag).startswith("cannot run: --input-shape")


@pytest.mark.parametrize("exc,want", [
    (RuntimeError("line one\n  line two\t end"), "line one line two end"),
    (ValueError(""), "ValueError"),
    (RuntimeError("x" * 400), "x" * 300 + "..."),
])
def test_one_line_makes_any_library_error_one_line(exc, want):
    assert one_line(exc) == want
