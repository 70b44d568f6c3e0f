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
    nothing, so before forking the librosa functions that run numba code are also called once here (without it a
    forked worker segfaulted inside librosa's beat tracker when the first track was a quarantined file).
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
        warm_librosa()
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


def warm_librosa() -> None:
    """Compile or load, in this process, the numba code of the librosa functions the stages call."""
    import librosa
    import numpy as np

    env = np.abs(np.random.default_rng(0).standard_normal(400)).astype(np.float32)
    env[::20] += 4.0  # a pulse, so the beat tracker and peak picker find something
    librosa.beat.beat_track(onset_envelope=env, sr=22050, hop_length=512, units="frames")
    peaks = librosa.onset.onset_detect(onset_envelope=env, sr=22050, hop_length=512, units="frames")
    librosa.onset.onset_backtrack(peaks, env)
