"""What several test modules share: where the repository's models are, why the torch tests skip, and how to run
the installed console script and check its one-line errors."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

# The CPU build of the torch extra, as the README installs it (a plain `pip install '.[torch]'` pulls the CUDA one)
TORCH_INSTALL = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && "
                 "pip install -e '.[torch]'")
TORCH_SKIP = f"the torch extra is not installed (CPU build: {TORCH_INSTALL})"

EXE = shutil.which("onnx-collapse")


def cli(*args, cwd=None):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_one_line_error(result, code, *words):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0]
