"""Audio fingerprints that survive re-encoding, gain change and a trimmed start.

Landmark hashing (the Shazam idea): peaks of a log-magnitude spectrogram at 11.025 kHz are paired
(anchor -> a few later peaks), and each pair becomes a hash of (anchor bin, target bin, time gap). Peaks
are local maxima, so a gain change (a constant shift of the log spectrogram) leaves them where they are;
lossy coding moves few of them; a trimmed start shifts every landmark by the same number of frames. Two
files are the same recording when many of their hashes agree at one time offset (offset histogram), so
matching is an inverted index over all tracks at once: fast enough for all pairs of hundreds of tracks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from lofi_lora.data import downmix
from lofi_lora.data.audio import resample

log = logging.getLogger(__name__)

FP_SAMPLE_RATE = 11025
N_FFT = 1024
HOP = 256                      # 23.2 ms frames at 11.025 kHz
PEAK_NEIGHBOURHOOD = (21, 11)  # (freq bins, frames) of the local-maximum filter
PEAKS_PER_SECOND = 15          # keep the strongest peaks only (weak peaks move most under lossy coding)
FAN_OUT = 6                    # targets paired with each anchor
TARGET_DT = (1, 48)            # frames after the anchor where targets are looked for
TARGET_DF = 64                 # max |bin difference| between anchor and target
OFFSET_TOLERANCE = 1           # frames either side of the best offset still count as aligned
MAX_POSTINGS = 200             # hashes that occur more often than this over the corpus carry no identity


@dataclass(frozen=True)
class Fingerprint:
    """Landmark hashes of one track and the frame at which each starts."""

    hashes: np.ndarray  # uint32 [n]
    frames: np.ndarray  # int32 [n]

    def __len__(self) -> int:
        return int(self.hashes.size)


def spectrogram_peaks(mono: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame, bin) of the salient spectral peaks of a mono signal at `sample_rate` (FP_SAMPLE_RATE)."""
    _, _, z = signal.stft(mono, fs=sample_rate, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary=None, padded=False)
    mag_db = 20.0 * np.log10(np.abs(z) + 1e-9)  # [bins, frames]
    if mag_db.shape[1] < 2:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    local_max = ndimage.maximum_filter(mag_db, size=PEAK_NEIGHBOURHOOD, mode="constant", cval=-np.inf)
    # Relative floor: gain-invariant, and drops peaks of near-silence and dither.
    floor = max(np.percentile(mag_db, 50.0), mag_db.max() - 80.0)
    is_peak = (mag_db == local_max) & (mag_db > floor)
    is_peak[0, :] = False  # DC bin
    bins, frames = np.nonzero(is_peak)
    strength = mag_db[bins, frames]
    n_keep = max(1, int(PEAKS_PER_SECOND * mono.size / sample_rate))
    if bins.size > n_keep:
        keep = np.argsort(-strength, kind="stable")[:n_keep]
        bins, frames = bins[keep], frames[keep]
    order = np.lexsort((bins, frames))
    return frames[order].astype(np.int32), bins[order].astype(np.int32)


def landmarks(frames: np.ndarray, bins: np.ndarray) -> Fingerprint:
    """Pair each peak with up to FAN_OUT later peaks in its target zone and hash the pairs."""
    hashes: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    n = frames.size
    if n == 0:
        return Fingerprint(np.zeros(0, np.uint32), np.zeros(0, np.int32))
    # Candidates for anchor i are peaks i+1 .. i+k with frames sorted; vectorised over a fixed window.
    window = 8 * FAN_OUT
    taken = np.zeros(n, np.int32)
    for k in range(1, window + 1):
        a = np.arange(n - k)
        b = a + k
        dt = frames[b] - frames[a]
        df = bins[b] - bins[a]
        ok = (dt >= TARGET_DT[0]) & (dt <= TARGET_DT[1]) & (np.abs(df) <= TARGET_DF) & (taken[a] < FAN_OUT)
        a, b, dt = a[ok], b[ok], dt[ok]
        taken[a] += 1
        h = (bins[a].astype(np.uint32) << 15) | (bins[b].astype(np.uint32) << 6) | dt.astype(np.uint32)
        hashes.append(h)
        starts.append(frames[a])
    return Fingerprint(np.concatenate(hashes), np.concatenate(starts).astype(np.int32))


def fingerprint(audio: np.ndarray, sample_rate: int) -> Fingerprint:
    """Fingerprint `[channels, frames]` audio at any rate (downmixed to a mono that cannot cancel, resampled to
    11.025 kHz)."""
    mono = downmix.for_analysis(np.asarray(audio, dtype=np.float32))[None, :]
    return fingerprint_mono(resample(mono, sample_rate, FP_SAMPLE_RATE)[0])


def fingerprint_mono(mono: np.ndarray) -> Fingerprint:
    """Fingerprint of a mono signal already at FP_SAMPLE_RATE (trackscan.scan's `fp_mono`)."""
    frames, bins = spectrogram_peaks(np.nan_to_num(mono.astype(np.float64)), FP_SAMPLE_RATE)
    return landmarks(frames, bins)


@dataclass(frozen=True)
class Match:
    a: int            # index of the first track (a < b)
    b: int
    similarity: float  # aligned hashes / hashes of the shorter fingerprint
    offset_s: float    # time in a where b's start lies (0.7: b is a with its first 0.7 s trimmed)


def match_all(prints: list[Fingerprint], min_similarity: float) -> list[Match]:
    """Every pair (a < b) whose aligned-hash fraction reaches `min_similarity`, by an inverted index."""
    if len(prints) < 2:
        return []
    track = np.concatenate([np.full(len(p), i, np.int32) for i, p in enumerate(prints)])
    hashes = np.concatenate([p.hashes for p in prints])
    frames = np.concatenate([p.frames for p in prints])
    order = np.argsort(hashes, kind="stable")
    hashes, frames, track = hashes[order], frames[order], track[order]
    uniq, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    common = uniq[counts > MAX_POSTINGS]
    sizes = np.array([len(p) for p in prints])
    matches: list[Match] = []
    for q, p in enumerate(prints):
        if len(p) == 0:
            continue
        hq, tq = p.hashes, p.frames
        if common.size:
            keep = ~np.isin(hq, common)
            hq, tq = hq[keep], tq[keep]
        lo = np.searchsorted(hashes, hq, "left")
        hi = np.searchsorted(hashes, hq, "right")
        n = hi - lo
        if n.sum() == 0:
            continue
        idx = np.repeat(lo - np.cumsum(np.r_[0, n[:-1]]), n) + np.arange(n.sum())
        other = track[idx]
        sel = other > q  # each pair once, never with itself
        if not sel.any():
            continue
        other = other[sel]
        offset = frames[idx][sel] - np.repeat(tq, n)[sel]
        for b in np.unique(other):
            off = offset[other == b]
            vals, cnt = np.unique(off, return_counts=True)
            # Aligned count with a +-OFFSET_TOLERANCE window (trims need not fall on a hop boundary).
            cum = np.r_[0, np.cumsum(cnt)]
            left = np.searchsorted(vals, vals - OFFSET_TOLERANCE, "left")
            right = np.searchsorted(vals, vals + OFFSET_TOLERANCE, "right")
            windowed = cum[right] - cum[left]
            best = int(np.argmax(windowed))
            sim = float(windowed[best]) / float(min(sizes[q], sizes[b]))
            if sim >= min_similarity:
                matches.append(Match(q, int(b), min(sim, 1.0), -float(vals[best]) * HOP / FP_SAMPLE_RATE))
    return matches


def similarity(a: Fingerprint, b: Fingerprint) -> float:
    """Aligned-hash fraction of two fingerprints (0 = unrelated, 1 = identical)."""
    found = match_all([a, b], 0.0)
    return found[0].similarity if found else 0.0
