import os
from pathlib import Path
import pytest, torch

# The test machine is small and shared: one intra-op thread is fastest for these tiny tensors.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    "Every test starts from the same RNG state, so random inputs are reproducible"
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='session')
def real_mnist():
    "MNIST's folder from $COSINE_LOSSES_MNIST or ../shared/data/mnist; required under CI, else the test is skipped"
    p = Path(os.environ.get('COSINE_LOSSES_MNIST') or Path(__file__).resolve().parents[2]/'shared/data/mnist')
    if not p.is_dir():
        if os.environ.get('CI'): pytest.fail(f"real MNIST is required under CI: set $COSINE_LOSSES_MNIST (looked in {p})")
        pytest.skip(f"real MNIST not found at {p}; set $COSINE_LOSSES_MNIST")
    return p
