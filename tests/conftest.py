"""Suite-wide settings."""
import pytest

SHARED_CLONE = "reproduced_clone"  # the xdist group of the modules that copy the `reproduced_clone` fixture


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tests run toy-sized models: extra OpenMP threads only add contention on a 2-core box
    (a 32x32 linear took 5 ms with 2 threads under load, 0.04 ms with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def reproduced_clone(tmp_path_factory):
    """A fresh clone after `dvc repro`, built once for the slow modules; never modified: take a `copy_of` it."""
    from helpers.clone import reproduce

    return reproduce(tmp_path_factory.mktemp("reproduced") / "repo")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """For `pytest -n auto --dist loadgroup` (make test): each module runs on one worker, so its module fixtures are
    built once, and the modules sharing the reproduced clone run first, together, as the longest unit of work."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("xdist_group").args[0] != SHARED_CLONE)
