"""Suite-wide settings, and how `make test` spreads the suite over the cores (pytest-xdist)."""
from pathlib import Path

import pytest

# the modules that copy the `reproduced_clone` fixture: one unit of work for xdist, scheduled first (the longest)
SHARED_CLONE_MODULES = ("test_pipeline.py", "test_sweep.py")


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


def _shares_the_clone(nodeid: str) -> bool:
    return Path(nodeid.split("::", 1)[0]).name in SHARED_CLONE_MODULES


def pytest_collection_modifyitems(items):
    """The modules sharing the reproduced clone first (stable sort: the rest keep their order)."""
    items.sort(key=lambda item: not _shares_the_clone(item.nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` by module (each module's fixtures are built once), with the modules sharing the reproduced
    clone as one unit. xdist's own `loadgroup` cannot do it under pytest 9 (it renames `item._nodeid`, which pytest 9
    no longer reads: tests of one group landed on both workers)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "reproduced_clone" if _shares_the_clone(nodeid) else nodeid.split("::", 1)[0]

    return ModuleScheduling(config, log)
