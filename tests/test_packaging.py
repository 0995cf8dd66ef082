"""What a user installs and reads: the wheel's contents, ``python -m onnx_collapse``, declared dependencies,
the README's set-up commands and tables, and shipped models free of the exporting machine's paths."""

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import onnx
import pytest
from readme_tables import splice

from tests.common import MODELS, ROOT

PACKAGE = ROOT / "onnx_collapse"
README = (ROOT / "README.md").read_text()
RESULTS_PAGE = (ROOT / "docs" / "results.md").read_text()  # where the studies' tables are (linked from the README)
# the console script of the interpreter running the tests (a venv's), else the one on PATH
EXE = shutil.which("onnx-collapse", path=str(Path(sys.executable).parent)) or shutil.which("onnx-collapse")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """Distribution names per group: "core" (dependencies) and each extra, from pyproject.toml."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {g: {canonical(re.match(r"[A-Za-z0-9_.-]+", r)[0]) for r in reqs} for g, reqs in groups.items()}


def third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    tops = {name.split(".")[0] for name in names}
    return {t for t in tops if t not in sys.stdlib_module_names and t != "onnx_collapse"}


def test_every_direct_import_is_a_declared_dependency():
    groups, dists = declared(), packages_distributions()
    for path in PACKAGE.rglob("*.py"):
        allowed = groups["core"] | (groups["torch"] if "torch" in path.relative_to(PACKAGE).parts[:1] else set())
        allowed |= groups["plot"] if path.name == "plot.py" else set()  # imported only for --plot
        for module in third_party_imports(path):
            provided_by = {canonical(d) for d in dists.get(module, [module])}
            assert provided_by & allowed, f"{path.relative_to(ROOT)} imports {module} ({provided_by}), not declared"


def test_every_runtime_dependency_has_a_tested_lower_bound():
    """.ci/min-versions installs each dependency at its lower bound: each needs exactly one, as name>=X."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    for req in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+>=[0-9][0-9.]*", req), req


def test_wheel_ships_license_typing_marker_and_report_schema(tmp_path):
    pytest.importorskip("setuptools", minversion="77", reason="building the wheel offline needs setuptools>=77")
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "onnx_collapse", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", tmp_path / "dist", src], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("onnx_collapse-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "onnx_collapse/py.typed" in names
        example = zf.read("onnx_collapse/examples/three_layer.onnx")  # what `onnx-collapse demo` runs on
        assert example == (MODELS / "three_layer.onnx").read_bytes()  # make models keeps the copy current
        schema = zf.read("onnx_collapse/schemas/report.schema.json")
        assert schema == (PACKAGE / "schemas" / "report.schema.json").read_bytes()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert zf.read(license_file) == (ROOT / "LICENSE").read_bytes()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "License-Expression: MIT" in metadata
    assert "onnx-collapse = onnx_collapse.__main__:main" in entry_points
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "onnx-collapse authors" in license_text


def python_m(*args, **kw):
    return subprocess.run([sys.executable, "-m", "onnx_collapse", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kw)


def test_python_m_onnx_collapse_optimizes_and_reports_errors_in_one_line(tmp_path):
    result = python_m("optimize", MODELS / "three_layer.onnx", tmp_path / "out.onnx")
    assert result.returncode == 0, result.stderr
    assert "verification: PASSED" in result.stdout and (tmp_path / "out.onnx").exists()
    missing = python_m("analyze", tmp_path / "missing.onnx")
    assert missing.returncode == 2
    assert missing.stderr.startswith("onnx-collapse: error:") and len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(EXE is None, reason="console script not installed (pip install -e .)")
@pytest.mark.parametrize("args", [["--help"], ["optimize", "--help"], ["--version"], ["optimize"]])
def test_python_m_onnx_collapse_is_the_console_script(args):
    script = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)
    module = python_m(*args)
    assert (module.returncode, module.stdout, module.stderr) == (script.returncode, script.stdout, script.stderr)


def setup_commands() -> list[str]:
    section = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_two_setup_commands_and_ci_runs_exactly_the_test_command():
    run_command, test_command = setup_commands()
    assert "onnx-collapse optimize models/" in run_command
    for model in re.findall(r"models/\S+\.onnx", run_command):
        assert (ROOT / model).is_file()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == test_command
    assert "torch" not in test_command  # an ordinary machine must not pull torch's CUDA build for the tests


def test_results_tables_are_the_studies_committed_output():
    results = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    assert {p.stem for p in results} >= {"layercollapse_digits", "alds_budget"}
    for path in results:
        assert path.read_text().startswith("| ") and path.read_text() in RESULTS_PAGE
    assert splice(RESULTS_PAGE) == RESULTS_PAGE, "docs/results.md differs from benchmarks/results/: make readme-tables"
    assert "](docs/results.md)" in README and "<!-- begin: benchmarks/results/" not in README


def test_a_results_table_without_readme_markers_is_refused(tmp_path):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "new.md").write_text("| a |\n")
    with pytest.raises(SystemExit, match="benchmarks/results/new.md"):
        splice("# readme\n", tmp_path)
    marked = "<!-- begin: benchmarks/results/new.md -->\nold\n<!-- end: benchmarks/results/new.md -->\n"
    assert splice(marked, tmp_path) == marked.replace("old\n", "| a |\n")


def test_shipped_models_name_no_file_of_the_exporting_machine():
    """make models reproduces the files on another machine: no stack traces with absolute paths inside."""
    for path in sorted(MODELS.glob("*.onnx")):
        model = onnx.load(str(path))
        keys = {p.key for n in model.graph.node for p in n.metadata_props}
        assert "pkg.torch.onnx.stack_trace" not in keys, path.name
        assert b"site-packages" not in path.read_bytes() and b"export.py" not in path.read_bytes(), path.name
