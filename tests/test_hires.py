"""Hi-res input (96/192 kHz, 24/32-bit, float WAV/FLAC) reaches 48 kHz without clipping or precision loss."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from lofi_lora.data import trackscan


def _sine(sr: int, amp: float, seconds: float = 3.0, hz: float = 997.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)


def _core(x: np.ndarray, sr: int = 48000) -> np.ndarray:
    return x[:, sr // 10: -sr // 10]  # the resampler's edges aside


@pytest.mark.parametrize("sr,fmt,subtype", [(96000, "wav", "PCM_24"), (96000, "flac", "PCM_24"),
                                            (192000, "wav", "PCM_32"), (192000, "flac", "PCM_24")])
def test_a_minus_6_dbfs_sine_comes_out_at_its_level(tmp_path, sr, fmt, subtype):
    p = tmp_path / f"sine.{fmt}"
    sf.write(str(p), np.stack([_sine(sr, 0.5)] * 2, axis=1), sr, subtype=subtype)
    s = trackscan.scan(p, silence_db=-60.0, conform=(48000, 2))
    out = _core(s.conformed)
    assert np.abs(out).max() == pytest.approx(0.5, abs=2e-4)
    assert np.sqrt(np.mean(out.astype(np.float64) ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-4)
    ref = _core(_sine(48000, 0.5)[None])
    assert np.abs(out[0] - ref[0]).max() < 1e-4  # the waveform itself, not only its level
    assert s.measures.source_sample_rate == sr and s.measures.clipping_ratio == 0.0
    if subtype == "PCM_24":
        assert s.measures.sample_bits == 24  # the 24-bit grid survives decoding (float32 holds it exactly)


def test_float_wav_above_full_scale_is_not_clipped_by_the_resampler(tmp_path):
    p = tmp_path / "hot.wav"
    sf.write(str(p), np.stack([_sine(192000, 1.5)] * 2, axis=1).astype(np.float32), 192000, subtype="FLOAT")
    s = trackscan.scan(p, silence_db=-60.0, conform=(48000, 2))
    assert np.abs(_core(s.conformed)).max() == pytest.approx(1.5, abs=1e-3)
    assert s.measures.sample_peak_dbfs == pytest.approx(20 * np.log10(1.5), abs=0.01)


def test_a_24_bit_96k_quiet_sine_keeps_its_low_bits(tmp_path):
    p = tmp_path / "quiet.wav"
    amp = 2.0 ** -18  # -108 dBFS: six 24-bit steps, below 16-bit resolution
    sf.write(str(p), _sine(96000, amp)[:, None], 96000, subtype="PCM_24")
    out = _core(trackscan.scan(p, conform=(48000, 1)).conformed)
    assert np.abs(out).max() == pytest.approx(amp, rel=0.05)
