"""One pass over a file's decoded blocks (audio.blocks): quality measures, loudness, bandwidth, the
fingerprint's mono signal and the track conformed to the clip rate, in memory bounded by the block size plus
the outputs asked for (the conformed track: 0.4 MB per second at 48 kHz stereo).

Measures are taken per block and combined (sums, maxima, frame-weighted ratios); integrated loudness over
several blocks comes from the streaming BS.1770 meter (loudness.py). A file of one block (up to 60 s) gives
exactly what the whole-array functions of quality.py give.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from lofi_lora.data import audio, downmix, quality
from lofi_lora.data.loudness import StreamingLoudness


@dataclass
class Scan:
    sample_rate: int
    frames: int
    measures: quality.Measures | None = None
    lufs: float = float("-inf")
    peak: float = 0.0
    bandwidth_hz: float = 0.0
    fp_mono: np.ndarray | None = None    # [frames] at fp_rate
    conformed: np.ndarray | None = None  # [channels, frames] float32 at the conformed rate


class _Resampler:
    """soxr VHQ in a stream (bit-identical to audio.resample over the whole signal)."""

    def __init__(self, sr_in: int, sr_out: int, channels: int):
        self.same = sr_in == sr_out
        self.stream = None if self.same else soxr.ResampleStream(sr_in, sr_out, channels, dtype="float32",
                                                                  quality="VHQ")
        self.parts: list[np.ndarray] = []

    def add(self, x: np.ndarray, last: bool = False) -> None:
        if self.same:
            self.parts.append(x)
        else:
            self.parts.append(np.ascontiguousarray(self.stream.resample_chunk(np.ascontiguousarray(x.T), last=last).T))

    def result(self) -> np.ndarray:
        out = np.concatenate(self.parts, axis=1) if len(self.parts) > 1 else self.parts[0]
        self.parts = []
        return out


def scan(path: str | Path, start: int = 0, stop: int | None = None, *, silence_db: float | None = None,
         fp_rate: int | None = None, bandwidth: bool = False, conform: tuple[int, int] | None = None) -> Scan:
    """Decode frames `[start, stop)` of `path` block by block and compute what is asked for.

    silence_db: quality measures (quality.Measures of the stereo downmix at the native rate); fp_rate: the
    analysis mono (downmix.for_analysis, never cancelling) resampled to it; bandwidth: quality.bandwidth_hz;
    conform: `(sample_rate, channels)` of the returned track. Loudness and peak are always measured.
    """
    measures: list[quality.Measures] = []
    dc_sum: np.ndarray | None = None
    psd_sum, psd_w = None, 0
    meter = fp = conf = None
    sr, frames, peak = 0, 0, 0.0
    pending: np.ndarray | None = None  # one block held back so the resamplers know which block is last
    lufs_single = float("-inf")
    blocks = 0

    def feed(x: np.ndarray, mono: np.ndarray | None, last: bool) -> None:
        if fp is not None:
            fp.add(mono[None, :], last)
        if conf is not None:
            conf.add(x, last)

    for native, sr, speakers in audio.blocks(path, start, stop):
        blocks += 1
        x = downmix.to_stereo(native, speakers)  # quality and loudness are those of the stereo downmix
        if meter is None:
            meter = StreamingLoudness(sr, x.shape[0])
            fp = _Resampler(sr, fp_rate, 1) if fp_rate else None
            conf = _Resampler(sr, conform[0], x.shape[0]) if conform else None
        frames += x.shape[1]
        bad = ~np.isfinite(x)
        clean = np.where(bad, 0.0, x).astype(np.float32) if bad.any() else x
        meter.add(clean)
        peak = max(peak, float(np.abs(clean).max(initial=0.0)))
        if blocks == 1:
            lufs_single = quality.integrated_lufs(clean, sr)
        if silence_db is not None:
            measures.append(quality.measure(x, sr, sr, silence_db))
            dc_sum = clean.sum(axis=1, dtype=np.float64) + (0 if dc_sum is None else dc_sum)
        if bandwidth and (blocks == 1 or clean.shape[1] >= 4096):
            f, p = quality.welch_psd(clean, sr)
            psd_sum = p * clean.shape[1] + (0 if psd_sum is None else psd_sum)
            psd_w += clean.shape[1]
        if pending is not None:
            feed(*pending, False)
        pending = clean, (downmix.for_analysis(np.nan_to_num(native), speakers) if fp is not None else None)
        del native
    feed(*pending, True)
    out = Scan(sample_rate=sr, frames=frames, peak=peak,
               lufs=lufs_single if blocks == 1 else meter.integrated())
    if silence_db is not None:
        out.measures = quality.combine(measures, float(np.max(np.abs(dc_sum / frames))), out.lufs)
    if bandwidth:
        out.bandwidth_hz = quality.bandwidth_from_psd(f, psd_sum / psd_w)
    if fp is not None:
        out.fp_mono = fp.result()[0]
    if conf is not None:
        out.conformed = audio.to_channels(conf.result(), conform[1]).astype(np.float32)
    return out
