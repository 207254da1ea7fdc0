import os

# Tests never reach the Hugging Face Hub: set before huggingface_hub is imported anywhere.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')
# One intra-op thread in this process and in every process a test starts (they inherit it; the trainer keeps an
# explicit OMP_NUM_THREADS): tests compare weights and logits bit for bit across processes, and the kernels, hence
# the last bits, depend on the thread count.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

import fgvc_zoo  # noqa: E402,F401  (registers the heads)
from fgvc_zoo.models import list_heads  # noqa: E402


def _parametrizes(metafunc, name: str) -> bool:
    for marker in metafunc.definition.iter_markers('parametrize'):
        names = marker.args[0]
        names = names.split(',') if isinstance(names, str) else names
        if name in [n.strip() for n in names]:
            return True
    return False


def pytest_generate_tests(metafunc):
    """A test that takes a `head` runs for every registered head (the registry, not a list kept in the tests),
    unless it parametrizes `head` itself."""
    if 'head' in metafunc.fixturenames and not _parametrizes(metafunc, 'head'):
        metafunc.parametrize('head', list_heads())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def batch():
    """Three 64 px images and their classes out of 5."""
    return torch.randn(3, 3, 64, 64), torch.tensor([0, 2, 4])
