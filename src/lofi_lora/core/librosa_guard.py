"""librosa, imported one process at a time: numba's on-disk cache is not safe against concurrent compiles.

Importing librosa compiles its signature-typed gufuncs (peak picking, zero crossings, pitch interpolation) and the
first calls compile the rest (the beat tracker); numba writes the machine code beside librosa. On a fresh install two
processes doing that at once can write mismatched cache files, and every process that loads them then segfaults
(numba#10128, open): seen in this project's CI when two test workers analysed audio at once, and in a forked
preprocess worker. `load` holds a machine-wide file lock while it imports librosa and calls, once, each librosa
function the stages reach that runs numba code, so one process compiles and the others load a complete cache.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from types import ModuleType

LOCK = Path(tempfile.gettempdir()) / "lofi-lora-librosa-numba.lock"
_librosa: ModuleType | None = None


def load() -> ModuleType:
    """The librosa module, its numba code compiled or loaded under the lock (once per process; forks inherit it)."""
    global _librosa
    if _librosa is None:
        from filelock import FileLock

        with FileLock(str(LOCK)):
            import librosa

            _warm(librosa)
        _librosa = librosa
    return _librosa


def _warm(librosa: ModuleType) -> None:
    """Call the lazily compiled numba functions the stages use (the beat tracker, onset peaks and backtracking)."""
    import numpy as np

    env = np.abs(np.random.default_rng(0).standard_normal(400)).astype(np.float32)
    env[::20] += 4.0  # a pulse, so the beat tracker and peak picker find something
    librosa.beat.beat_track(onset_envelope=env, sr=22050, hop_length=512, units="frames")
    peaks = librosa.onset.onset_detect(onset_envelope=env, sr=22050, hop_length=512, units="frames")
    librosa.onset.onset_backtrack(peaks, env)
