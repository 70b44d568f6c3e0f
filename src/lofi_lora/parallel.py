"""Process pools that are safe with numba-compiled librosa code."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def map_processes(fn: Callable[[T], R], items: Iterable[T], workers: int, desc: str, unit: str = "it") -> list[R]:
    """`[fn(x) for x in items]` in order, over up to `workers` forked processes; the first item runs here first.

    librosa's numba functions cache machine code on disk. On a fresh install, two processes compiling the same
    function at once write that cache concurrently and can leave it corrupt, after which every run segfaults
    (seen on a fresh clone's `make demo`). Running one item in this process first compiles what that item needs and
    forked workers inherit it; an item that takes another code path (a track quarantined before analysis) compiles
    nothing, so the stages default to one worker and more are safe once a run has filled the cache.
    """
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit)
    results: list[R] = []
    if items:
        results.append(fn(items[0]))
        bar.update()
    rest = items[1:]
    workers = min(workers, len(rest))
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for r in pool.map(fn, rest, chunksize=1):
                results.append(r)
                bar.update()
    else:
        for x in rest:
            results.append(fn(x))
            bar.update()
    bar.close()
    return results
