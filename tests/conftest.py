"""Suite-wide settings."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tests run toy-sized models: extra OpenMP threads only add contention on a 2-core box
    (a 32x32 linear took 5 ms with 2 threads under load, 0.04 ms with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
