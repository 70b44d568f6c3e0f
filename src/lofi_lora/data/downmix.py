"""Multichannel audio to stereo (ITU-R BS.775 coefficients) by the file's channel layout, and a mono mix for
analysis that cannot cancel.

The layout comes from the WAVE_FORMAT_EXTENSIBLE channel mask where a WAV declares one, else from the channel
count in the order the format defines (WAV/FLAC: L R C LFE BL BR SL SR; Ogg Vorbis: L C R ...). Front channels
go to their side at unity, centre and surround/rear/top channels at -3 dB (a centre to both sides), LFE is
dropped (BS.775 leaves it out of the downmix). Mono and stereo pass unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MINUS_3DB = 10 ** (-3 / 20)

# WAVE_FORMAT_EXTENSIBLE dwChannelMask bits, in the order the channels are stored.
MASK_SPEAKERS = ("FL", "FR", "FC", "LFE", "BL", "BR", "FLC", "FRC", "BC", "SL", "SR",
                 "TC", "TFL", "TFC", "TFR", "TBL", "TBC", "TBR")
# Default layouts by channel count (WAVE default masks; FLAC's order is the same for 1-8 channels).
WAV_ORDER = {1: ("FC",), 2: ("FL", "FR"), 3: ("FL", "FR", "FC"), 4: ("FL", "FR", "BL", "BR"),
             5: ("FL", "FR", "FC", "BL", "BR"), 6: ("FL", "FR", "FC", "LFE", "BL", "BR"),
             7: ("FL", "FR", "FC", "LFE", "BC", "SL", "SR"), 8: ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR")}
VORBIS_ORDER = {1: ("FC",), 2: ("FL", "FR"), 3: ("FL", "FC", "FR"), 4: ("FL", "FR", "BL", "BR"),
                5: ("FL", "FC", "FR", "BL", "BR"), 6: ("FL", "FC", "FR", "BL", "BR", "LFE"),
                7: ("FL", "FC", "FR", "SL", "SR", "BC", "LFE"), 8: ("FL", "FC", "FR", "SL", "SR", "BL", "BR", "LFE")}
# (gain to left, gain to right) per speaker.
GAINS = {"FL": (1.0, 0.0), "FR": (0.0, 1.0), "FC": (MINUS_3DB, MINUS_3DB), "LFE": (0.0, 0.0),
         "BL": (MINUS_3DB, 0.0), "BR": (0.0, MINUS_3DB), "FLC": (1.0, 0.0), "FRC": (0.0, 1.0),
         "BC": (MINUS_3DB, MINUS_3DB), "SL": (MINUS_3DB, 0.0), "SR": (0.0, MINUS_3DB),
         "TC": (MINUS_3DB, MINUS_3DB), "TFL": (MINUS_3DB, 0.0), "TFC": (MINUS_3DB, MINUS_3DB),
         "TFR": (0.0, MINUS_3DB), "TBL": (MINUS_3DB, 0.0), "TBC": (MINUS_3DB, MINUS_3DB), "TBR": (0.0, MINUS_3DB)}


def wav_channel_mask(path: str | Path) -> int | None:
    """The dwChannelMask of a WAVE_FORMAT_EXTENSIBLE fmt chunk, or None (not a WAV, plain PCM/float, mask 0)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64", b"BW64") or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"fmt ":
                body = f.read(min(size, 40))
                if len(body) < 24 or int.from_bytes(body[:2], "little") != 0xFFFE:
                    return None
                return int.from_bytes(body[20:24], "little") or None
            f.seek(size + (size & 1), 1)


def layout(channels: int, mask: int | None = None, vorbis: bool = False) -> tuple[str, ...]:
    """Speaker names of the channels, in stored order: from the mask when it names exactly `channels`
    speakers, else the format's default order for the count (unknown extra channels are named by index)."""
    if mask:
        named = tuple(s for bit, s in enumerate(MASK_SPEAKERS) if mask >> bit & 1)
        if len(named) == channels:
            return named
    order = (VORBIS_ORDER if vorbis else WAV_ORDER).get(channels)
    return order or WAV_ORDER[8] + tuple(f"ch{i}" for i in range(8, channels))


def stereo_matrix(speakers: tuple[str, ...]) -> np.ndarray:
    """`[2, channels]` downmix gains (unknown channels at -3 dB to both sides)."""
    return np.array([GAINS.get(s, (MINUS_3DB, MINUS_3DB)) for s in speakers], dtype=np.float32).T


def to_stereo(block: np.ndarray, speakers: tuple[str, ...]) -> np.ndarray:
    """`[channels, frames]` -> `[2, frames]` by the BS.775 gains; mono and stereo are returned as they are."""
    if block.shape[0] <= 2:
        return block
    return (stereo_matrix(speakers) @ block).astype(block.dtype)


def for_analysis(audio: np.ndarray, speakers: tuple[str, ...] | None = None) -> np.ndarray:
    """Mono `[frames]` for analysis (fingerprint) that cannot cancel: the mid (L+R)/2 of the stereo downmix, or
    its side (L-R)/2 when that holds more energy (an out-of-phase pair), or, when both together hold less than a
    quarter of the channels' mean energy (surrounds that cancel the fronts), the loudest channel. So the result
    always keeps at least a quarter of the mean channel energy; for ordinary stereo it is the mid, as before."""
    if audio.shape[0] == 1:
        return audio[0]
    stereo = to_stereo(audio, speakers or layout(audio.shape[0]))
    left, right = stereo[0], stereo[1]
    mid, side = (left + right) / 2, (left - right) / 2
    e_mid, e_side = float(np.dot(mid, mid)), float(np.dot(side, side))
    if audio.shape[0] > 2:
        energy = np.einsum("cf,cf->c", audio, audio, dtype=np.float64)
        if 4 * max(e_mid, e_side) < energy.mean():
            return audio[int(np.argmax(energy))]
    return side if e_side > e_mid else mid
