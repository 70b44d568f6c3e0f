"""Multichannel files reach stereo by BS.775 gains and their declared layout; analysis mono never cancels."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from lofi_lora.data import audio, downmix, quality, trackscan
from lofi_lora.ingest.fingerprint import fingerprint, similarity
from test_audio import make_track
from wavex import MASK_5_1, MASK_5_1_SIDE, MASK_7_1, write_wavex

SR = 48000
M3 = 10 ** (-3 / 20)


def _sine(seconds: float = 3.0, hz: float = 440.0, amp: float = 0.5, sr: int = SR) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def _stereo(path) -> np.ndarray:
    return np.concatenate([downmix.to_stereo(b, sp) for b, _, sp in audio.blocks(path)], axis=1)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_5_1_centre_only_reaches_both_sides_at_minus_3_db(tmp_path):
    x = np.zeros((6, 3 * SR), np.float32)
    x[2] = _sine()
    st = _stereo(write_wavex(tmp_path / "c.wav", x, SR, MASK_5_1))
    assert st.shape[0] == 2
    for side in st:
        assert _rms(side) == pytest.approx(_rms(x[2]) * M3, rel=1e-3)  # the old first-two-channels mix gave 0


def test_7_1_by_its_mask_lfe_dropped_and_surrounds_to_their_side(tmp_path):
    x = np.zeros((8, 2 * SR), np.float32)
    x[3] = _sine(2.0, 60.0)   # LFE
    x[7] = _sine(2.0, 500.0)  # SR: the right side at -3 dB
    st = _stereo(write_wavex(tmp_path / "7.wav", x, SR, MASK_7_1))
    assert _rms(st[0]) < 1e-4
    assert _rms(st[1]) == pytest.approx(_rms(x[7]) * M3, rel=1e-3)
    assert downmix.layout(8, MASK_7_1)[-2:] == ("SL", "SR")


def test_a_mask_moves_the_surrounds_where_the_count_alone_would_not(tmp_path):
    x = np.zeros((6, SR), np.float32)
    x[4] = _sine(1.0)  # SL in a 5.1(side) layout
    st = _stereo(write_wavex(tmp_path / "side.wav", x, SR, MASK_5_1_SIDE))
    assert _rms(st[0]) == pytest.approx(_rms(x[4]) * M3, rel=1e-3) and _rms(st[1]) < 1e-4


def test_4_0_without_a_mask_is_quad_by_count(tmp_path):
    x = np.zeros((4, SR), np.float32)
    x[0], x[2] = _sine(1.0, 300.0), _sine(1.0, 700.0)  # FL, BL
    p = tmp_path / "quad.wav"
    sf.write(str(p), x.T, SR, subtype="PCM_24")
    assert downmix.wav_channel_mask(p) is None
    st = _stereo(p)
    assert np.allclose(st[0], x[0] + M3 * x[2], atol=1e-6) and _rms(st[1]) < 1e-6


def test_mono_passes_as_mono_and_is_conformed_to_two_equal_channels(tmp_path):
    p = tmp_path / "mono.wav"
    sf.write(str(p), _sine(2.0), SR, subtype="PCM_24")
    assert _stereo(p).shape[0] == 1
    s = trackscan.scan(p, conform=(SR, 2), silence_db=-60.0)
    assert s.conformed.shape[0] == 2 and np.array_equal(s.conformed[0], s.conformed[1])
    assert s.measures.lufs == pytest.approx(quality.integrated_lufs(_sine(2.0)[None], SR), abs=0.01)


def test_vorbis_order_puts_the_centre_second():
    assert downmix.layout(6, vorbis=True) == ("FL", "FC", "FR", "BL", "BR", "LFE")
    assert downmix.layout(6) == ("FL", "FR", "FC", "LFE", "BL", "BR")


def test_six_channel_96k_file_is_measured_on_its_downmix(tmp_path):
    x = np.zeros((6, 4 * 96000), np.float32)
    x[0], x[1], x[2] = _sine(4.0, 220.0, 0.3, 96000), _sine(4.0, 330.0, 0.3, 96000), _sine(4.0, 440.0, 0.3, 96000)
    s = trackscan.scan(write_wavex(tmp_path / "hi.wav", x, 96000, MASK_5_1), silence_db=-60.0, fp_rate=11025)
    expected = quality.integrated_lufs(downmix.to_stereo(x, downmix.layout(6, MASK_5_1)), 96000)
    assert s.lufs == pytest.approx(expected, abs=1e-3) and s.measures.lufs == s.lufs  # pyloudnorm refused 6 channels
    assert s.measures.silence_ratio == 0.0 and s.measures.duration_s == 4.0


def test_fingerprint_mono_of_surrounds_that_cancel_the_fronts_keeps_the_music(tmp_path):
    music = make_track(5, 6.0, SR)[0].astype(np.float32)
    x = np.zeros((6, music.size), np.float32)
    x[2] = music
    x[4] = x[5] = -music  # BS.775 L = .707 C + .707 BL = 0: the downmix itself cancels
    assert _rms(downmix.to_stereo(x, downmix.layout(6))) < 1e-6
    mono = trackscan.scan(write_wavex(tmp_path / "x.wav", x, SR, MASK_5_1), fp_rate=11025).fp_mono
    assert _rms(mono) > 0.25 * _rms(music)
    assert similarity(fingerprint(x, SR), fingerprint(music[None], SR)) > 0.9


def test_the_analysis_mono_of_an_out_of_phase_pair_does_not_cancel():
    left = make_track(3, 8.0, SR)[0].astype(np.float32)
    anti = np.stack([left, -left])
    assert _rms(downmix.for_analysis(anti)) == pytest.approx(_rms(left), rel=1e-6)
    assert similarity(fingerprint(anti, SR), fingerprint(left[None], SR)) > 0.9
    normal = np.stack([left, 0.5 * left])
    assert np.array_equal(downmix.for_analysis(normal), normal.mean(axis=0))  # ordinary stereo: the mid, as before
