"""The streaming BS.1770 meter gives pyloudnorm's integrated loudness, fed in blocks of any size."""
from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest

from lofi_lora.data.loudness import StreamingLoudness


@pytest.mark.parametrize("sr", [44100, 48000, 96000])
@pytest.mark.parametrize("block", [4410, 12345, 10 ** 6])
def test_streamed_loudness_equals_pyloudnorm(sr, block):
    rng = np.random.default_rng(sr)
    loud = np.r_[np.linspace(0.01, 0.5, 8 * sr), np.full(4 * sr, 1e-4), np.full(3 * sr, 0.2)]
    x = (rng.standard_normal((2, loud.size)) * loud).astype(np.float32)
    meter = StreamingLoudness(sr, 2)
    for i in range(0, x.shape[1], block):
        meter.add(x[:, i:i + block])
    assert meter.integrated() == pytest.approx(pyloudnorm.Meter(sr).integrated_loudness(x.T.astype(np.float64)),
                                               abs=1e-6)


def test_silence_and_too_short_are_minus_infinity():
    m = StreamingLoudness(48000, 2)
    m.add(np.zeros((2, 48000), np.float32))
    assert m.integrated() == float("-inf")
    short = StreamingLoudness(48000, 1)
    short.add(np.ones((1, 1000), np.float32))
    assert short.integrated() == float("-inf")
