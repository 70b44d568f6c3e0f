"""Test files with a declared channel layout: a WAVE_FORMAT_EXTENSIBLE WAV whose dwChannelMask is set."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

MASK_5_1 = 0x3F     # FL FR FC LFE BL BR
MASK_7_1 = 0x63F    # FL FR FC LFE BL BR SL SR
MASK_5_1_SIDE = 0x60F  # FL FR FC LFE SL SR


def write_wavex(path: Path, audio: np.ndarray, sample_rate: int, mask: int, subtype: str = "PCM_24") -> Path:
    """Write `[channels, frames]` as WAVE_FORMAT_EXTENSIBLE (libsndfile) and set its channel mask."""
    sf.write(str(path), np.ascontiguousarray(audio.T), sample_rate, format="WAVEX", subtype=subtype)
    data = bytearray(path.read_bytes())
    fmt = data.index(b"fmt ")
    assert int.from_bytes(data[fmt + 8:fmt + 10], "little") == 0xFFFE
    data[fmt + 28:fmt + 32] = mask.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path
