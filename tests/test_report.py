"""The report as a person reads it (tables fitted to a width, wrapped and cut cells) and as strict JSON."""

import json

from onnx_collapse.report import Column, _table, cut_chain, cut_end, cut_middle, dumps, strict


def test_a_wrapped_column_keeps_the_row_together():
    columns = [Column("#", left=True), Column("why", left=True, wrap=True, least=10)]
    lines = _table(columns, [["1", "one two three four five six"], ["2", "short"]], 14).splitlines()
    assert lines == ["#  why", "-  -----------", "1  one two", "   three four", "   five six", "2  short"]


def test_layer_lists_keep_their_ends():
    assert cut_chain("first > b > c > last", 20) == "first > b > c > last"
    assert cut_chain("first > b > c > last", 19) == "first > ... > last"
    assert cut_middle("encoder.layer.11.mlp.fc2", 12) == "encod....fc2"
    assert cut_end("a long reason", 9) == "a long..."


def test_columns_go_in_their_order_and_widen_again():
    columns = [Column("name", left=True), Column("low", drop=1), Column("high", drop=2),
               Column("why", left=True, cut=cut_end, least=6)]
    rows = [["n", "1" * 10, "2" * 10, "w" * 30]]
    assert _table(columns, rows).splitlines()[2] == "n     " + "1" * 10 + "  " + "2" * 10 + "  " + "w" * 30
    line = _table(columns, rows, 30).splitlines()[2]
    assert line == "n     " + "2" * 10 + "  " + "w" * 9 + "..."  # low dropped; why cut to what is left
    assert len(line) == 30


def _refuse(token):
    raise ValueError(f"not strict JSON: {token}")


def test_the_json_report_is_strict_and_names_where_each_undefined_number_was():
    payload = {"error": {"max_abs": float("nan")}, "bounds": [1.0, float("inf")], "a/b": {"c~d": float("-inf")}}
    printed = json.loads(dumps(payload), parse_constant=_refuse)
    assert printed["error"] == {"max_abs": None} and printed["bounds"] == [1.0, None] and printed["a/b"] == {"c~d": None}
    assert printed["undefined_numbers"] == [{"path": "/error/max_abs", "value": "NaN"},
                                            {"path": "/bounds/1", "value": "Infinity"},
                                            {"path": "/a~1b/c~0d", "value": "-Infinity"}]  # JSON Pointers
    assert strict({"x": 1.5, "y": [2]}) == {"x": 1.5, "y": [2]}  # nothing undefined: no list
