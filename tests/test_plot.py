"""``analyze --plot``: the ALDS trade-off picture, written atomically, with clean errors."""

import shutil
import subprocess
import sys

import pytest

import onnx_collapse as oc
from tests.common import MODELS

EXE = shutil.which("onnx-collapse")
pytestmark = pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL = MODELS / "no_fold_slope_05.onnx"  # two layers, both targets with --low-rank all


def cli(*args):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=120)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-collapse: error: "), result.stderr
    for word in words:
        assert word in lines[0]


def read_png(path):
    image = pytest.importorskip("matplotlib.image", reason="matplotlib is not installed (the plot extra)")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return image.imread(str(path))


@pytest.mark.parametrize("args", [[], ["--rank-budget", "0.3"]])
def test_plot_writes_a_png_and_leaves_nothing_else(tmp_path, args):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    picture = tmp_path / "tradeoff.png"
    result = cli("analyze", MODEL, "--spectrum", "--low-rank", "all", "--plot", picture, *args)
    assert result.returncode == 0, result.stderr
    assert "max layer error (ALDS)" in result.stdout and result.stderr == ""
    assert f"wrote the trade-off plot to {picture}\ndone in " in result.stdout
    height, width, _ = read_png(picture).shape
    assert width >= 800 and height >= 300
    assert [p.name for p in tmp_path.iterdir()] == ["tradeoff.png"]


def test_an_existing_picture_is_replaced(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    picture = tmp_path / "p.png"
    picture.write_bytes(b"old")
    assert cli("analyze", MODELS / "three_layer.onnx", "--plot", picture).returncode == 0
    assert read_png(picture).shape[0] > 0


def test_the_picture_marks_the_budget_and_shows_each_layers_rank():
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    from onnx_collapse import allocate, plot

    found = oc.analyze(MODEL, spectrum=True, low_rank="all")
    fig = plot.draw(found.spectra, found.tradeoff, 0.3)
    trade, ranks = fig.axes
    texts = [t.get_text() for t in trade.texts]
    (kept, error), = [(k, e) for b, k, e in plot.curve(found.spectra, found.tradeoff, 0.3) if b == 0.3]
    assert texts == [f"budget 30%: keeps {kept:.1%}\nlargest layer error {error:.3f}"]
    chosen = allocate.allocate_budget(found.spectra, 0.3)
    labels = [t.get_text() for t in ranks.texts]
    assert labels == [f" r={o.rank}  err {o.error:.3f}" for o in chosen]
    assert [t.get_text() for t in ranks.get_yticklabels()] == [s.name for s in found.spectra]


def test_the_curve_agrees_with_the_analysis_where_both_have_points():
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    from onnx_collapse import plot

    found = oc.analyze(MODEL, spectrum=True, low_rank="all")
    points = plot.curve(found.spectra, found.tradeoff, 0.42)
    assert set(found.tradeoff) <= set(points) and [p[0] for p in points] == sorted(p[0] for p in points)
    assert 0.42 in [p[0] for p in points] and len(points) >= 19


@pytest.mark.slow
def test_plot_refuses_the_input_model(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(MODEL, model)
    before = model.read_bytes()
    assert_one_line_error(cli("analyze", model, "--plot", model), "--plot", "input model")
    assert model.read_bytes() == before


def test_plot_refuses_an_unknown_format(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    assert_one_line_error(cli("analyze", MODEL, "--plot", tmp_path / "p.xyz"), "no picture format 'xyz'")


def test_plot_without_targets_is_a_clean_error(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    assert_one_line_error(cli("analyze", MODEL, "--plot", tmp_path / "p.png"), "no low-rank targets")
    assert not (tmp_path / "p.png").exists()


@pytest.mark.slow
def test_missing_matplotlib_is_one_line_and_exit_2(tmp_path):
    blocked = ("import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.figure'] = None; "
               "sys.argv = ['onnx-collapse'] + sys.argv[1:]; from onnx_collapse.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", blocked, "analyze", str(MODEL), "--plot", str(tmp_path / "p.png")],
                            capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "--plot needs matplotlib", "pip install")
    assert list(tmp_path.iterdir()) == []


def test_the_text_report_says_where_the_picture_went(tmp_path, monkeypatch):
    """Without matplotlib too: the drawing replaced by a stand-in that writes the file, the command as a user runs it."""
    from click.testing import CliRunner

    from onnx_collapse import cli as cli_module
    from onnx_collapse import plot

    monkeypatch.setattr(plot, "picture_format", lambda path: "png")
    monkeypatch.setattr(plot, "plot_tradeoff", lambda spectra, tradeoff, path, budget=None: open(path, "wb").close())
    picture = tmp_path / "p.png"
    result = CliRunner().invoke(cli_module.cli, ["analyze", str(MODEL), "--plot", str(picture)])
    assert result.exit_code == 0, result.output
    assert picture.exists() and f"wrote the trade-off plot to {picture}" in result.stdout
