"""Quality measures, the reasons they give, and loudness normalisation under a true-peak ceiling."""
from __future__ import annotations

import numpy as np
import pytest

from lofi_lora.data import quality
from test_audio import make_track

SR = 48000
LIMITS = {"max_clipping_ratio": 0.001, "max_silence_ratio": 0.5, "silence_db": -60.0, "max_dc_offset": 0.05,
          "min_lufs": -45.0, "min_clip_s": 8.0, "max_track_s": 3600.0, "min_source_sample_rate": 44100}


def reasons(x, sr=SR, source_sr=SR):
    return [r for r, _ in quality.check(quality.measure(x, sr, source_sr, LIMITS["silence_db"]), LIMITS)]


@pytest.fixture(scope="module")
def track():
    return make_track(5, 12.0, sr=SR)


def test_clean_track_passes(track):
    assert reasons(track) == []
    assert quality.score(quality.measure(track, SR, SR, -60.0), LIMITS) > 0.9


@pytest.mark.parametrize("scale", [1.0, 0.5])  # clipped, and clipped then turned down
def test_clipping_is_found_relative_to_the_peak(track, scale):
    clipped = np.clip(track * 6.0, -1.0, 1.0) * scale
    assert quality.clipping_ratio(clipped) > 5 * LIMITS["max_clipping_ratio"]
    assert reasons(clipped) == ["clipping"]
    assert quality.clipping_ratio(track) < 1e-5


def test_silence_quiet_dc_nonfinite_rate_and_length(track):
    near_silent = track * 10 ** (-75 / 20)
    assert reasons(near_silent)[:2] == ["silence", "too_quiet"]
    noise = np.random.default_rng(0).standard_normal((2, SR * 10)) * 10 ** (-52 / 20)  # steady, -52 dBFS RMS
    assert reasons(noise) == ["too_quiet"]
    assert reasons(track + 0.1) == ["dc_offset"]
    bad = track.copy()
    bad[0, 1000:1010] = np.nan
    assert reasons(bad)[0] == "non_finite"
    assert reasons(track, source_sr=22050) == ["low_sample_rate"]
    assert reasons(track[:, : SR * 5]) == ["too_short"]


def test_true_peak_sees_inter_sample_peaks():
    n = np.arange(SR)
    x = np.sin(2 * np.pi * (SR / 4) * n / SR + np.pi / 4)[None, :] * 0.9  # samples at +-0.636, true peak 0.9
    sample_peak_db = 20 * np.log10(np.max(np.abs(x)))
    assert sample_peak_db == pytest.approx(20 * np.log10(0.9 * np.sqrt(0.5)), abs=0.01)  # -3.9 dB
    # 4x oversampling recovers the 3 dB between the samples (to within the interpolation filter's ripple)
    assert quality.true_peak_dbfs(x) == pytest.approx(20 * np.log10(0.9), abs=0.2)


@pytest.mark.parametrize("level_db", [-40.0, -12.0, 0.0])
@pytest.mark.parametrize("seed", [1, 2])
def test_normalised_loudness_within_half_lu_and_true_peak_under_ceiling(level_db, seed):
    x = make_track(seed, 10.0, sr=SR) * 10 ** (level_db / 20) * 2.0
    n = quality.normalise(x, SR, target_lufs=-14.0, ceiling_dbfs=-1.0)
    assert abs(quality.integrated_lufs(n.audio, SR) - (-14.0)) <= 0.5
    assert quality.true_peak_dbfs(n.audio) <= -1.0 + 1e-6
    assert n.audio.shape == x.shape and np.isfinite(n.audio).all()


def test_normalising_silence_is_an_error():
    with pytest.raises(ValueError, match="silence"):
        quality.normalise(np.zeros((2, SR * 2), np.float32), SR, -14.0, -1.0)


def _pcm(x: np.ndarray, subtype: str, sr: int = 44100) -> np.ndarray:
    """`x` after a round trip through a WAV file of `subtype` (what the decoder hands preprocess)."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x.T, sr, subtype=subtype, format="WAV")
    buf.seek(0)
    return sf.read(buf, dtype="float32", always_2d=True)[0].T


@pytest.mark.parametrize("hz", [55.0, 440.0, 1000.0, 4000.0])
def test_clean_half_amplitude_sine_in_8bit_pcm_is_not_clipping(hz):
    t = np.arange(44100 * 10) / 44100
    x = _pcm(np.tile(0.5 * np.sin(2 * np.pi * hz * t), (2, 1)), "PCM_U8")
    m = quality.measure(x, 44100, 44100, LIMITS["silence_db"])
    assert m.sample_bits == 8 and m.clipping_ratio == 0.0
    assert "clipping" not in reasons(x, 44100, 44100)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_clipped_music_is_caught_at_every_bit_depth(track, subtype):
    x = _pcm(np.clip(track * 6.0, -1.0, 1.0), subtype, SR)
    assert "clipping" in reasons(x)
    assert "clipping" not in reasons(_pcm(track, subtype, SR))
