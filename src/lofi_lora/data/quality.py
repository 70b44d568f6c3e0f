"""Quality measures of decoded audio and loudness normalisation with a true-peak ceiling (numpy only).

Every function takes `[channels, frames]` float audio. `check` turns the measures into quarantine reasons
(the names of docs/ARCHITECTURE.md), `normalise` brings a clip to a target integrated loudness (ITU-R
BS.1770 via pyloudnorm) while keeping its 4x-oversampled true peak under a ceiling.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyloudnorm
from scipy import ndimage, signal

log = logging.getLogger(__name__)

SCORER_VERSION = "quality-1"
OVERSAMPLE = 4
LIMITER_LOOKAHEAD_S = 0.005


def sample_bits(audio: np.ndarray) -> int | None:
    """The PCM bit depth (8, 16 or 24) whose grid holds every sample, or None (float, lossy, processed audio).

    Measured from the samples rather than read from a header, so it also holds for a 16-bit file in a 24-bit
    container.
    """
    for bits in (8, 16, 24):
        scaled = audio * float(2 ** (bits - 1))
        if np.array_equal(scaled, np.round(scaled)):
            return bits
    return None


def clipping_ratio(audio: np.ndarray, bits: int | None = None, tolerance: float = 1e-4) -> float:
    """Fraction of samples in flat runs at their channel's peak that quantisation cannot explain.

    At the format's full scale (within one step of the bit depth `bits`), any run of >= 2 samples is clipping.
    Below full scale (a clipped file later turned down) a run counts when it is >= 3 samples long and the
    signal arrives at it and leaves it steeply (by more than 4 quantisation steps or 0.1% of the peak): a
    smooth peak stored at a low bit depth also repeats its top code, but its neighbours sit one or two steps
    below (a clean half-amplitude sine in 8-bit PCM has 4-sample plateaus at its peaks, not clipping).
    """
    a = np.abs(audio)
    if not a.size:
        return 0.0
    lsb = 2.0 ** (1 - bits) if bits else 0.0
    clipped = 0
    for ch in a:  # per channel: a clipped channel may sit beside a quieter one
        peak = float(ch.max())
        if peak <= 0.0:
            continue
        full_scale = 1.0 - max(1.5 * lsb, tolerance)  # PCM's top code is one step below 1.0 on the + side
        at = ch >= (full_scale if peak >= full_scale else peak - max(peak * tolerance, lsb / 2))
        edges = np.diff(np.r_[0, at.astype(np.int8), 0])
        starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
        length = ends - starts
        if peak >= full_scale:
            runs = length >= 2
        else:
            step = max(4 * lsb, 1e-3 * peak)
            before, after = ch[np.maximum(starts - 1, 0)], ch[np.minimum(ends, ch.size - 1)]
            runs = (length >= 3) & (peak - before > step) & (peak - after > step)
        clipped += int(length[runs].sum())
    return clipped / a.size


def bandwidth_hz(audio: np.ndarray, sample_rate: int, floor_db: float = -70.0) -> float:
    """Highest frequency whose average power is within `floor_db` of the strongest frequency.

    Evidence of a copy's history: a lossy encode is low-passed (often at 15-19 kHz) and an upsampled copy
    holds nothing above its old Nyquist frequency.
    """
    return bandwidth_from_psd(*welch_psd(audio, sample_rate), floor_db)


def welch_psd(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, Welch power spectrum) of the mono mix; spectra of consecutive blocks can be averaged."""
    mono = audio.mean(axis=0) if audio.size else np.zeros(1)
    return signal.welch(mono.astype(np.float64), sample_rate, nperseg=min(4096, mono.size))


def bandwidth_from_psd(f: np.ndarray, p: np.ndarray, floor_db: float = -70.0) -> float:
    """`bandwidth_hz` of a (block-averaged) Welch spectrum."""
    if not np.any(p > 0):
        return 0.0
    above = np.nonzero(10.0 * np.log10(p / p.max() + 1e-30) > floor_db)[0]
    return float(f[above[-1]])


def frame_rms_db(audio: np.ndarray, sample_rate: int, frame_s: float = 0.05) -> np.ndarray:
    """RMS level (dBFS) of consecutive mono-mixed frames."""
    mono = audio.mean(axis=0)
    n = max(1, int(frame_s * sample_rate))
    usable = mono[: (mono.size // n) * n].reshape(-1, n) if mono.size >= n else mono[None, :]
    return 10.0 * np.log10(np.mean(usable.astype(np.float64) ** 2, axis=1) + 1e-20)


def silence_ratio(audio: np.ndarray, sample_rate: int, silence_db: float) -> float:
    """Fraction of 50 ms frames quieter than `silence_db` dBFS."""
    return float(np.mean(frame_rms_db(audio, sample_rate) < silence_db))


def dc_offset(audio: np.ndarray) -> float:
    """Largest per-channel mean."""
    return float(np.max(np.abs(audio.mean(axis=1)))) if audio.size else 0.0


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """BS.1770 integrated loudness (LUFS); -inf for silence or audio shorter than one 400 ms block."""
    if audio.shape[1] < int(0.4 * sample_rate) + 1:
        return float("-inf")
    with np.errstate(divide="ignore"):
        return float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio.T.astype(np.float64)))


def true_peak_dbfs(audio: np.ndarray) -> float:
    """Peak of the 4x-oversampled signal in dBFS (catches inter-sample peaks a sample peak misses)."""
    up = signal.resample_poly(audio.astype(np.float64), OVERSAMPLE, 1, axis=1)
    peak = float(np.max(np.abs(up))) if up.size else 0.0
    return 20.0 * np.log10(peak) if peak > 0 else float("-inf")


def _limit(audio: np.ndarray, sample_rate: int, ceiling: float) -> np.ndarray:
    """Look-ahead peak limiter: a smooth gain that keeps every oversampled peak under `ceiling`.

    The needed gain per sample is min-filtered over 2h+1 samples and then averaged over 2h+1, so every
    smoothed gain is at most the gain its own sample needs (each window of the average covers that sample).
    """
    up = np.abs(signal.resample_poly(audio.astype(np.float64), OVERSAMPLE, 1, axis=1)).max(axis=0)
    need = np.minimum(1.0, ceiling / np.maximum(up.reshape(-1, OVERSAMPLE)[: audio.shape[1]].max(axis=1), 1e-12))
    if need.min() >= 1.0:
        return audio
    h = max(1, int(LIMITER_LOOKAHEAD_S * sample_rate))
    gain = ndimage.uniform_filter1d(ndimage.minimum_filter1d(need, 2 * h + 1, mode="nearest"), 2 * h + 1, mode="nearest")
    return (audio * gain[None, :]).astype(audio.dtype)


@dataclass(frozen=True)
class Normalised:
    audio: np.ndarray
    lufs: float
    true_peak_dbfs: float
    gain_db: float


def normalise(audio: np.ndarray, sample_rate: int, target_lufs: float, ceiling_dbfs: float,
              tolerance_lu: float = 0.1, max_iter: int = 6) -> Normalised:
    """Gain to `target_lufs`, limiting peaks above `ceiling_dbfs` (true peak); the gain is re-solved after
    limiting, which takes loudness away, until the result is within `tolerance_lu` of the target."""
    lufs_in = integrated_lufs(audio, sample_rate)
    if not np.isfinite(lufs_in):
        raise ValueError("cannot normalise silence (integrated loudness is -inf)")
    ceiling = 10.0 ** ((ceiling_dbfs - 0.05) / 20.0)  # a hair below: the oversampled peak is an estimate
    gain_db = target_lufs - lufs_in
    out, lufs = audio, lufs_in
    for _ in range(max_iter):
        out = _limit(audio * 10.0 ** (gain_db / 20.0), sample_rate, ceiling)
        lufs = integrated_lufs(out, sample_rate)
        if abs(lufs - target_lufs) <= tolerance_lu:
            break
        gain_db += target_lufs - lufs
    tp = true_peak_dbfs(out)
    if tp > ceiling_dbfs:  # the smoothed gain can leave a residue of a few hundredths of a dB
        out = out * 10.0 ** ((ceiling_dbfs - 0.05 - tp) / 20.0)
        tp, lufs = true_peak_dbfs(out), integrated_lufs(out, sample_rate)
    return Normalised(out.astype(np.float32), float(lufs), float(tp), float(gain_db))


@dataclass(frozen=True)
class Measures:
    """Automated quality measures of one track or clip."""

    duration_s: float
    source_sample_rate: int
    non_finite: int
    clipping_ratio: float
    silence_ratio: float
    dc_offset: float
    lufs: float
    sample_peak_dbfs: float
    sample_bits: int | None = None  # measured PCM grid; None for float/lossy audio

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) and np.isfinite(v) else (None if isinstance(v, float) else v))
                for k, v in asdict(self).items()}


def measure(audio: np.ndarray, sample_rate: int, source_sample_rate: int, silence_db: float) -> Measures:
    """All measures of `audio` (NaN/Inf are counted, then treated as 0 for the rest)."""
    bad = ~np.isfinite(audio)
    clean = np.where(bad, 0.0, audio) if bad.any() else audio
    peak = float(np.max(np.abs(clean))) if clean.size else 0.0
    bits = sample_bits(clean)
    return Measures(
        duration_s=audio.shape[1] / sample_rate, source_sample_rate=int(source_sample_rate), non_finite=int(bad.sum()),
        clipping_ratio=clipping_ratio(clean, bits), silence_ratio=silence_ratio(clean, sample_rate, silence_db),
        dc_offset=dc_offset(clean), lufs=integrated_lufs(clean, sample_rate),
        sample_peak_dbfs=20.0 * np.log10(peak) if peak > 0 else float("-inf"), sample_bits=bits)


def combine(parts: list[Measures], dc_offset: float, lufs: float) -> Measures:
    """The measures of consecutive blocks of one track as one: sums, maxima and frame-weighted ratios, with the
    track's DC offset and integrated loudness (which do not combine from blocks) given. One block: itself."""
    if len(parts) == 1:
        return parts[0]
    w = np.array([m.duration_s for m in parts])
    peak = max(m.sample_peak_dbfs for m in parts)
    bits = [m.sample_bits for m in parts]
    return Measures(
        duration_s=float(w.sum()), source_sample_rate=parts[0].source_sample_rate,
        non_finite=sum(m.non_finite for m in parts),
        clipping_ratio=float(np.dot(w, [m.clipping_ratio for m in parts]) / w.sum()),
        silence_ratio=float(np.dot(w, [m.silence_ratio for m in parts]) / w.sum()),
        dc_offset=dc_offset, lufs=lufs, sample_peak_dbfs=peak, sample_bits=None if None in bits else max(bits))


def check(m: Measures, limits: dict[str, Any]) -> list[tuple[str, str]]:
    """Quarantine reasons `(reason, detail)` for the measures, most basic first; empty when usable.

    `limits` is the `audio` config section (max_clipping_ratio, max_silence_ratio, silence_db,
    max_dc_offset, min_lufs, min_clip_s, max_track_s, min_source_sample_rate).
    """
    out: list[tuple[str, str]] = []
    if m.non_finite:
        out.append(("non_finite", f"{m.non_finite} NaN/Inf samples"))
    if m.source_sample_rate < int(limits["min_source_sample_rate"]):
        out.append(("low_sample_rate", f"source {m.source_sample_rate} Hz < audio.min_source_sample_rate="
                                       f"{limits['min_source_sample_rate']}"))
    if m.duration_s < float(limits["min_clip_s"]):
        out.append(("too_short", f"{m.duration_s:.2f} s < audio.min_clip_s={limits['min_clip_s']}"))
    if m.duration_s > float(limits["max_track_s"]):
        out.append(("too_long", f"{m.duration_s:.0f} s > audio.max_track_s={limits['max_track_s']}"))
    if m.silence_ratio > float(limits["max_silence_ratio"]):
        out.append(("silence", f"{m.silence_ratio:.1%} of frames below {limits['silence_db']} dBFS "
                               f"> audio.max_silence_ratio={limits['max_silence_ratio']}"))
    if not np.isfinite(m.lufs) or m.lufs < float(limits["min_lufs"]):
        out.append(("too_quiet", f"integrated loudness {m.lufs:.1f} LUFS < audio.min_lufs={limits['min_lufs']}"))
    if m.clipping_ratio > float(limits["max_clipping_ratio"]):
        out.append(("clipping", f"{m.clipping_ratio:.3%} of samples clipped > audio.max_clipping_ratio="
                                f"{limits['max_clipping_ratio']}"))
    if m.dc_offset > float(limits["max_dc_offset"]):
        out.append(("dc_offset", f"DC offset {m.dc_offset:.3f} > audio.max_dc_offset={limits['max_dc_offset']}"))
    return out


def score(m: Measures, limits: dict[str, Any]) -> float:
    """One automated score in [0, 1]: 1 for clean audio, falling as each measure nears its limit."""
    parts = [
        1.0 - min(1.0, m.clipping_ratio / float(limits["max_clipping_ratio"])),
        1.0 - min(1.0, m.silence_ratio / float(limits["max_silence_ratio"])),
        1.0 - min(1.0, m.dc_offset / float(limits["max_dc_offset"])),
        0.0 if m.non_finite else 1.0,
    ]
    return float(np.prod(parts))
