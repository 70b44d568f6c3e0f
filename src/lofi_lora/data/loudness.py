"""ITU-R BS.1770-4 integrated loudness of a signal fed in blocks, in constant memory.

pyloudnorm only measures a whole array (its `integrated_loudness` copies it as float64 and filters it at once),
so an hour of audio costs gigabytes. This meter uses pyloudnorm's K-weighting filters with their state carried
from block to block, keeps one mean square per channel per 100 ms step, and gates the 400 ms blocks (75 %
overlap) at the end: the same definition, a few kB per minute of audio. Channel weights are 1 (a stereo downmix).
"""
from __future__ import annotations

import numpy as np
import pyloudnorm
from scipy import signal

BLOCK_S, STEP_S = 0.4, 0.1
ABSOLUTE_GATE, RELATIVE_GATE = -70.0, -10.0


class StreamingLoudness:
    """`add` `[channels, frames]` blocks in order, then `integrated()` gives LUFS (-inf: silence or < 400 ms)."""

    def __init__(self, sample_rate: int, channels: int):
        self.step = int(round(STEP_S * sample_rate))
        self.block = 4 * self.step
        self.filters = [(f.b, f.a, f.passband_gain) for f in pyloudnorm.Meter(sample_rate)._filters.values()]
        self.state = [np.zeros((channels, max(len(a), len(b)) - 1)) for b, a, _ in self.filters]
        self.carry = np.zeros((channels, 0))
        self.steps: list[np.ndarray] = []  # [channels] sums of squares per 100 ms step

    def add(self, block: np.ndarray) -> None:
        y = np.asarray(block, dtype=np.float64)
        for k, (b, a, gain) in enumerate(self.filters):
            y, self.state[k] = signal.lfilter(b, a, y, axis=1, zi=self.state[k])
            y = gain * y
        y = np.concatenate([self.carry, y], axis=1)
        n = y.shape[1] // self.step
        if n:
            self.steps.extend((y[:, : n * self.step] ** 2).reshape(y.shape[0], n, self.step).sum(axis=2).T)
        self.carry = y[:, n * self.step:]

    def integrated(self) -> float:
        if len(self.steps) < 4:
            return float("-inf")
        s = np.asarray(self.steps)                     # [steps, channels]
        z = (s[:-3] + s[1:-2] + s[2:-1] + s[3:]) / self.block  # mean square per 400 ms block and channel
        with np.errstate(divide="ignore"):
            loud = -0.691 + 10 * np.log10(z.sum(axis=1))
            gated = z[loud >= ABSOLUTE_GATE]
            if not gated.size:
                return float("-inf")
            relative = -0.691 + 10 * np.log10(gated.mean(axis=0).sum()) + RELATIVE_GATE
            kept = z[(loud > relative) & (loud > ABSOLUTE_GATE)]
            return float(-0.691 + 10 * np.log10(kept.mean(axis=0).sum())) if kept.size else float("-inf")
