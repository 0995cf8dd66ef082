"""The README and docs/ pages say what is true: every ```bash and ```python block runs as written (in a
fresh folder beside the shipped models), unless an HTML comment right above it says why not; every output
block marked ``<!-- output of: COMMAND -->`` is what that command prints now (the elapsed time aside)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnx_collapse import cli as cli_module
from tests.common import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- (?P<note>[^>]*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)
PIP = re.compile(r"^pip install [^&]*&& ")  # set-up prefix: the install itself is tested by test_packaging
ELAPSED = re.compile(r"done in [0-9.]+ s|done in \d+ min \d+ s")


def blocks(lang: str):
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            if m["lang"] == lang:
                line = text[: m.start()].count("\n") + 1
                yield pytest.param(m["note"], m["body"], id=f"{page.relative_to(ROOT)}:{line}")


@pytest.fixture
def folder(tmp_path) -> Path:
    """A fresh working folder where ``models/`` are the shipped models (commands write their outputs here)."""
    (tmp_path / "models").symlink_to(ROOT / "models")
    return tmp_path


def not_run(note: str | None) -> bool:
    """A block is left out only with a reason: ``<!-- not run: why -->``."""
    if note is None or not note.startswith("not run"):
        return False
    assert len(note.split(":", 1)[-1].split()) >= 3, f"say why the block is not run: {note!r}"
    return True


@pytest.mark.parametrize("note,body", list(blocks("bash")))
def test_bash_blocks_run(folder, note, body):
    if not_run(note):
        return
    for command in filter(None, (line.strip() for line in body.splitlines())):
        command = PIP.sub("", command)
        assert not command.startswith("pip "), "a pip command cannot run in a test: mark the block not run"
        result = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr)


@pytest.mark.parametrize("note,body", list(blocks("python")))
def test_python_blocks_run(folder, note, body):
    if not_run(note):
        return
    result = subprocess.run([sys.executable, "-c", body], cwd=folder, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                                str(ROOT), os.environ.get("PYTHONPATH")]))})
    assert result.returncode == 0, result.stderr


def printed(command: str, columns: int | None, folder: Path) -> str:
    """What ``command`` prints on stdout, as on a terminal ``columns`` wide (None: piped)."""
    args = shlex.split(command)
    assert args[0] == "onnx-collapse", command
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(cli_module, "stdout_is_terminal", lambda: columns is not None)
        result = CliRunner().invoke(cli_module.cli, args[1:], env={"COLUMNS": str(columns or 80)},
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("note,body", list(blocks("text")))
def test_output_blocks_are_what_the_commands_print(folder, note, body):
    m = re.fullmatch(r"output( tail)? of: (.*?)(?: \((\d+) columns\))?", note or "")
    if m is None:
        return  # a synopsis or a layout, not output
    tail, command, columns = bool(m[1]), m[2], int(m[3]) if m[3] else None
    actual = ELAPSED.sub("done in X s", printed(command, columns, folder))
    shown = ELAPSED.sub("done in X s", body)
    if tail:
        assert actual.endswith(shown), actual
    else:
        assert actual == shown, actual


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.split()) < 2000, len(readme.split())
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, page.name
    assert "onnx-collapse analyze" in readme.split("## Optimize")[0]  # analyze comes first
    assert shutil.which("bash")
