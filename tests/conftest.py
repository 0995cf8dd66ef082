from pathlib import Path

import pytest

from tests.common import MODELS

# Modules whose tests each run the console script in a subprocess or build large models (about 2 s a test on
# two cores, mostly onnx and onnxruntime loading): all slow. The quick subset, `python -m pytest -m "not slow"`,
# leaves them out, and the torch tests (tests/torch, tests/training: they train or export torch models); other
# slow tests carry @pytest.mark.slow themselves.
SLOW_MODULES = {"test_cli.py", "test_messages.py", "test_safety.py", "test_hostile.py", "test_verify_limits.py",
                "test_report_schema.py", "test_width.py", "test_memory.py", "test_packaging.py", "test_user_data.py",
                "test_docs.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES or item.path.parent.name in ("training", "torch"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def models_dir() -> Path:
    return MODELS
