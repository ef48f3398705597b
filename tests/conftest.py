import pytest, torch

# The test machine is small and shared: one intra-op thread is fastest for these tiny tensors.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    "Every test starts from the same RNG state, so random inputs are reproducible"
    torch.manual_seed(0)
    yield
