import os

# Tests never reach the Hugging Face Hub: set before huggingface_hub is imported anywhere.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

import fgvc_zoo  # noqa: E402,F401  (registers the heads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
