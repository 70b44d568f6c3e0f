"""Suite-wide settings, and the order `make test` hands modules to its workers (pytest-xdist, `--dist loadfile`)."""
import os
from pathlib import Path

import pytest

FIRST, LAST = "test_pipeline.py", "test_sweep.py"  # the two modules that copy the reproduced clone


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
    """A fresh clone after `dvc repro`, built once per run (the first worker to ask builds it under a lock, the
    others wait and share it); never modified: take a `copy_of` it."""
    from filelock import FileLock

    from helpers.clone import reproduce

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # the workers' common folder
    repo, done = root / "reproduced" / "repo", root / "reproduced" / "done"
    with FileLock(str(root / "reproduced.lock")):
        if not done.exists():
            reproduce(repo)
            done.touch()
    return repo


def pytest_collection_modifyitems(items):
    """The pipeline module first (it builds the clone while the other worker runs unit tests), the sweep module last
    (by then the clone is there); the rest keep their order."""
    rank = {FIRST: 0, LAST: 2}
    items.sort(key=lambda item: rank.get(Path(item.nodeid.split("::", 1)[0]).name, 1))
