import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_helpers import make_folder  # noqa: E402


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory) -> Path:
    """16 training and 4 validation images of 2 classes, 64 px: 4 steps an epoch at batch 4."""
    return make_folder(tmp_path_factory.mktemp('reliability_data'))
