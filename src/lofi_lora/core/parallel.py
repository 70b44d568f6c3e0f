"""Process pools that are safe with numba-compiled librosa code."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, TypeVar

from tqdm import tqdm

from lofi_lora.core import librosa_guard

T = TypeVar("T")
R = TypeVar("R")


def map_processes(fn: Callable[[T], R], items: Iterable[T], workers: int, desc: str, unit: str = "it") -> list[R]:
    """`[fn(x) for x in items]` in order, over up to `workers` forked processes; the first item runs here first.

    The workers are forked after this process has loaded librosa through `librosa_guard` (which compiles or loads its
    numba code under a machine-wide lock), so no worker compiles: a forked worker once segfaulted in librosa's beat
    tracker when the first track was quarantined before analysis and nothing had been compiled here.
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
        librosa_guard.load()
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
