"""Audio I/O round trips, and the seeded test-signal generator the ingest/preprocess tests share."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lofi_lora.data import audio
from lofi_lora.core.errors import DataError

NOTE_HZ = [220.0, 246.94, 261.63, 293.66, 329.63, 349.23, 392.0, 440.0]


def make_track(seed: int, duration_s: float, sr: int = 44100, bpm: float = 84.0, channels: int = 2) -> np.ndarray:
    """A seeded lofi-like test signal `[channels, frames]`: chords, kick/snare beats, hi-hat noise bursts.

    Different seeds give different chord progressions, tempos offsets and noise, so they must not match.
    """
    rng = np.random.default_rng(seed)
    n = int(duration_s * sr)
    t = np.arange(n) / sr
    y = np.zeros(n)
    beat_s = 60.0 / bpm
    chord_s = 4 * beat_s
    for k in range(int(np.ceil(duration_s / chord_s))):
        root = rng.choice(NOTE_HZ) * rng.choice([0.5, 1.0])
        freqs = [root, root * 2 ** (rng.choice([3, 4]) / 12), root * 2 ** (7 / 12), root * 2 ** (rng.choice([10, 11, 14]) / 12)]
        s0, s1 = int(k * chord_s * sr), min(n, int((k + 1) * chord_s * sr))
        tt = t[s0:s1] - t[s0]
        env = np.minimum(1.0, tt / 0.02) * np.exp(-tt / 3.0)
        for f in freqs:
            y[s0:s1] += 0.08 * env * (np.sin(2 * np.pi * f * tt) + 0.3 * np.sin(4 * np.pi * f * tt + rng.uniform(0, 6)))
    for b in range(int(duration_s / beat_s)):
        s0 = int(b * beat_s * sr)
        if b % 2 == 0:  # kick
            m = min(n - s0, int(0.25 * sr))
            tt = np.arange(m) / sr
            y[s0:s0 + m] += 0.5 * np.exp(-tt / 0.06) * np.sin(2 * np.pi * (50 + 90 * np.exp(-tt / 0.03)) * tt)
        else:  # snare
            m = min(n - s0, int(0.15 * sr))
            tt = np.arange(m) / sr
            y[s0:s0 + m] += 0.25 * np.exp(-tt / 0.05) * rng.standard_normal(m)
        h0 = s0 + int(beat_s / 2 * sr)  # off-beat hi-hat
        m = max(0, min(n - h0, int(0.04 * sr)))
        y[h0:h0 + m] += 0.06 * np.exp(-np.arange(m) / sr / 0.01) * np.diff(rng.standard_normal(m + 1))
    y += 0.002 * rng.standard_normal(n)
    out = np.stack([y * (1.0 - 0.1 * c) for c in range(channels)])
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg", ".mp3"])
def test_write_read_round_trip(tmp_path, ext):
    x = make_track(0, 3.0, sr=48000)
    path = tmp_path / f"a{ext}"
    audio.write(path, x, 48000, bitrate_kbps=192 if ext == ".mp3" else None)
    y, sr = audio.read(path)
    assert sr == 48000 and y.shape[0] == 2
    assert abs(y.shape[1] - x.shape[1]) < 0.1 * 48000  # mp3 adds encoder delay/padding
    if ext in (".wav", ".flac"):
        assert np.max(np.abs(y - x)) < 1e-5  # PCM_24


def test_load_resamples_and_sets_channels(tmp_path):
    x = make_track(1, 2.0, sr=22050, channels=1)
    path = tmp_path / "m.wav"
    audio.write(path, x, 22050)
    y = audio.load(path, 48000, 2)
    assert y.shape[0] == 2 and abs(y.shape[1] - 96000) <= 2 and y.dtype == np.float32


def test_m4a_through_ffmpeg(tmp_path):
    exe = audio.ffmpeg_exe()
    if exe is None:
        pytest.skip("imageio-ffmpeg binary not available")
    src = tmp_path / "s.wav"
    audio.write(src, make_track(2, 3.0), 44100)
    m4a = tmp_path / "s.m4a"
    subprocess.run([exe, "-v", "error", "-i", str(src), "-c:a", "aac", "-b:a", "128k", str(m4a)], check=True)
    y, sr = audio.read(m4a)
    assert sr == 44100 and y.shape[0] == 2 and y.shape[1] > 2.5 * sr
    assert audio.info(m4a).channels == 2


def test_undecodable_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + b"\x00" * 100)
    with pytest.raises(DataError, match="bad.flac"):
        audio.read(bad)
    junk = tmp_path / "junk.m4a"
    junk.write_bytes(b"not audio at all")
    if audio.ffmpeg_exe() is not None:
        with pytest.raises(DataError, match="junk.m4a"):
            audio.read(junk)


def test_long_ogg_write_does_not_crash(tmp_path):
    """libsndfile's Vorbis encoder overflowed the stack on one 60 s write (SIGSEGV in the report of a full-size
    rehearsal); `audio.write` feeds it in blocks. Run in a child so a crash fails this test, not the suite."""
    code = ("import sys, numpy as np; from lofi_lora.data import audio; "
            "x = (np.random.default_rng(0).standard_normal((2, 48000 * 90)) * 0.1).astype(np.float32); "
            "audio.write(sys.argv[1], x, 48000); print(audio.info(sys.argv[1]).frames)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "long.ogg")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == 48000 * 90
