"""Landmark fingerprints: copies survive mp3 re-encoding, gain change and a trimmed start; different tracks
do not match; all-pairs matching stays fast."""
from __future__ import annotations

import time

import numpy as np
import pytest

from lofi_lora.data import audio
from lofi_lora.ingest.fingerprint import Fingerprint, fingerprint, match_all, similarity
from test_audio import make_track

SR = 44100
THRESHOLD = 0.2  # conf/ingest/default.yaml duplicate_threshold


@pytest.fixture(scope="module")
def original():
    return make_track(0, 20.0, sr=SR)


def _mp3_round_trip(tmp_path, x, sr, kbps=128):
    p = tmp_path / "copy.mp3"
    audio.write(p, x, sr, bitrate_kbps=kbps)
    return audio.read(p)


def test_copy_reencoded_quieter_trimmed_matches(tmp_path, original):
    trim_s = 0.7
    copy = original[:, int(trim_s * SR):] * 10 ** (-4 / 20)
    y, sr = _mp3_round_trip(tmp_path, copy, SR)
    found = match_all([fingerprint(original, SR), fingerprint(y, sr)], THRESHOLD)
    assert len(found) == 1
    assert found[0].similarity >= THRESHOLD
    # the copy starts 0.7 s into the original (mp3 encoder delay adds a few ms)
    assert abs(found[0].offset_s - trim_s) < 0.1


@pytest.mark.parametrize("change", ["gain", "trim", "mp3", "mono_22k"])
def test_each_change_alone_matches(tmp_path, original, change):
    if change == "gain":
        y, sr = original * 0.3, SR
    elif change == "trim":
        y, sr = original[:, int(1.234 * SR):], SR
    elif change == "mp3":
        y, sr = _mp3_round_trip(tmp_path, original, SR, kbps=96)
    else:
        y, sr = audio.resample(audio.to_channels(original, 1), SR, 22050), 22050
    assert similarity(fingerprint(original, SR), fingerprint(y, sr)) >= THRESHOLD


def test_different_tracks_do_not_match():
    # same tempo and the same drum sounds: only the chords and noise differ
    prints = [fingerprint(make_track(seed, 12.0, sr=SR), SR) for seed in range(1, 7)]
    sims = [m.similarity for m in match_all(prints, 0.0)]
    assert max(sims, default=0.0) < THRESHOLD / 2
    assert match_all(prints, THRESHOLD) == []


def test_silence_has_no_landmarks_and_matches_nothing():
    silent = np.zeros((2, SR * 3), np.float32)
    fp = fingerprint(silent, SR)
    assert len(fp) == 0
    assert similarity(fp, fingerprint(make_track(3, 3.0, sr=SR), SR)) == 0.0


def test_all_pairs_on_hundreds_of_tracks_is_fast():
    rng = np.random.default_rng(0)
    n_tracks, n_hashes = 400, 3000  # ~3 minutes of audio each at 15 peaks/s x 6 pairs... order of magnitude
    prints = [Fingerprint(rng.integers(0, 2**24, n_hashes).astype(np.uint32),
                          np.sort(rng.integers(0, 8000, n_hashes)).astype(np.int32)) for _ in range(n_tracks)]
    prints.append(Fingerprint(prints[7].hashes.copy(), prints[7].frames + 40))  # an exact shifted copy
    t0 = time.process_time()  # CPU time: the box is shared
    found = match_all(prints, THRESHOLD)
    elapsed = time.process_time() - t0
    assert [(m.a, m.b) for m in found] == [(7, n_tracks)]
    assert found[0].similarity == pytest.approx(1.0)
    assert elapsed < 10.0, f"all-pairs matching of {n_tracks} tracks took {elapsed:.1f} s of CPU"
