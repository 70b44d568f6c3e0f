"""Audio I/O: the only module that reads or writes audio files.

Decoding goes through libsndfile (wav, flac, ogg, mp3) and falls back to the ffmpeg binary shipped in the
`imageio-ffmpeg` wheel for containers libsndfile cannot read (m4a/aac). ffmpeg is called with an argument
list, never a shell string. Every write is atomic.
"""
from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from lofi_lora.core.errors import DataError
from lofi_lora.core.fsutil import atomic_path

log = logging.getLogger(__name__)

SNDFILE_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
FFMPEG_EXTS = {".m4a", ".aac", ".mp4", ".opus", ".wma"}


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def ffmpeg_exe() -> str | None:
    """Path of the ffmpeg shipped by imageio-ffmpeg, or None when unavailable."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # missing wheel or binary
        return None


def info(path: str | Path) -> AudioInfo:
    """Header information; raises DataError when the file cannot be decoded."""
    path = Path(path)
    if path.suffix.lower() in FFMPEG_EXTS:
        audio, sr = read(path)
        return AudioInfo(sr, audio.shape[0], audio.shape[1], path.suffix.lower().lstrip("."))
    try:
        i = sf.info(str(path))
    except Exception as e:
        raise DataError(f"{path}: cannot decode ({e})") from e
    return AudioInfo(int(i.samplerate), int(i.channels), int(i.frames), i.format.lower())


def truncation(path: str | Path) -> str | None:
    """Why a WAV file is cut short (its data chunk declares more bytes than the file holds), else None.

    libsndfile decodes a truncated WAV without complaint, returning only the frames present, so the
    cut would otherwise go unnoticed. Other formats fail to decode (FLAC) or have no reliable length field.
    """
    path = Path(path)
    if path.suffix.lower() != ".wav":
        return None
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None  # not RIFF/WAVE: left to the decoder
        if head[:4] == b"RF64":
            return None  # 64-bit sizes live in a ds64 chunk; not checked
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, csize = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"data":
                available = size - f.tell()
                if csize != 0xFFFFFFFF and csize > available:
                    return f"truncated: data chunk declares {csize} bytes, file holds {available}"
                return None
            f.seek(csize + (csize & 1), 1)


def read(path: str | Path, dtype: str = "float32") -> tuple[np.ndarray, int]:
    """Decode a file to `[channels, frames]` float samples at its native rate.

    Raises:
        DataError: the file is truncated, corrupt or in a format no available decoder reads.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext in FFMPEG_EXTS:
        return _read_ffmpeg(path, dtype)
    try:
        data, sr = sf.read(str(path), dtype=dtype, always_2d=True)
    except Exception as e:
        raise DataError(f"{path}: cannot decode ({e})") from e
    if data.shape[0] == 0:
        raise DataError(f"{path}: no audio frames")
    return np.ascontiguousarray(data.T), int(sr)


def _read_ffmpeg(path: Path, dtype: str) -> tuple[np.ndarray, int]:
    exe = ffmpeg_exe()
    if exe is None:
        raise DataError(f"{path}: {path.suffix} needs ffmpeg, which is not available (pip install imageio-ffmpeg)")
    probe = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    sr, ch = 48000, 2
    for line in probe.stderr.splitlines():
        if "Audio:" in line:
            parts = [p.strip() for p in line.split("Audio:", 1)[1].split(",")]
            for p in parts:
                if p.endswith(" Hz"):
                    sr = int(p.split()[0])
                if p in ("mono", "stereo"):
                    ch = 1 if p == "mono" else 2
            break
    else:
        raise DataError(f"{path}: ffmpeg finds no audio stream ({probe.stderr.strip().splitlines()[-1:]})")
    proc = subprocess.run(
        [exe, "-v", "error", "-i", str(path), "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(ch), "-ar", str(sr), "-"],
        capture_output=True,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise DataError(f"{path}: ffmpeg cannot decode ({proc.stderr.decode(errors='replace').strip()[-300:]})")
    data = np.frombuffer(proc.stdout, dtype=np.float32).reshape(-1, ch).T.astype(dtype)
    return np.ascontiguousarray(data), sr


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality resampling (soxr VHQ) of `[channels, frames]`."""
    if sr_in == sr_out:
        return audio
    import soxr

    return np.ascontiguousarray(soxr.resample(audio.T, sr_in, sr_out, quality="VHQ").T.astype(audio.dtype))


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Mono -> duplicated stereo, more channels -> first `channels` (or mean for mono)."""
    if audio.shape[0] == channels:
        return audio
    if audio.shape[0] == 1:
        return np.repeat(audio, channels, axis=0)
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    return audio[:channels]


def conform(audio: np.ndarray, sr_in: int, sample_rate: int, channels: int) -> np.ndarray:
    """Decoded audio -> `[channels, frames]` float32 at `sample_rate` (what `load` returns)."""
    return to_channels(resample(audio, sr_in, sample_rate), channels).astype(np.float32)


def load(path: str | Path, sample_rate: int, channels: int) -> np.ndarray:
    """Decode, resample and set the channel count: `[channels, frames]` float32."""
    audio, sr = read(path)
    return conform(audio, sr, sample_rate, channels)


def write(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str | None = None,
          bitrate_kbps: int | None = None) -> None:
    """Write `[channels, frames]` atomically; the format follows the extension (wav, flac, ogg, mp3)."""
    path = Path(path)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot write {path.suffix} (wav, flac, ogg, mp3)")
    if subtype is None:
        subtype = {"WAV": "PCM_24", "FLAC": "PCM_24", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    extra = {}
    if fmt == "MP3" and bitrate_kbps:
        # libsndfile sets the MP3 bitrate through a compression level in [0, 1] (0 = 320 kbps, 1 = 32 kbps).
        extra = {"bitrate_mode": "CONSTANT",
                 "compression_level": float(np.clip(1.0 - (bitrate_kbps - 32) / (320 - 32), 0.0, 1.0))}
    with atomic_path(path) as tmp:
        with sf.SoundFile(str(tmp), "w", samplerate=sample_rate, channels=audio.shape[0], format=fmt,
                          subtype=subtype, **extra) as f:
            frames = np.ascontiguousarray(audio.T)
            for i in range(0, len(frames), 1 << 16):  # one call per block: libsndfile's Vorbis encoder
                f.write(frames[i:i + (1 << 16)])     # overflowed the stack on a 30 s write (SIGSEGV)
        if fmt == "OGG":
            tmp.write_bytes(fixed_ogg_serial(tmp.read_bytes()))


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def fixed_ogg_serial(data: bytes, serial: int = 0x6C6F6669) -> bytes:
    """The same Ogg stream with a fixed stream serial number (page CRCs recomputed).

    libsndfile draws the serial at random, so encoding the same audio twice gives different bytes: a DVC output
    holding OGG files (the listening report) would never reproduce.
    """
    out, pos = bytearray(data), 0
    while pos + 27 <= len(out) and out[pos:pos + 4] == b"OggS":
        n_seg = out[pos + 26]
        end = pos + 27 + n_seg + sum(out[pos + 27:pos + 27 + n_seg])
        out[pos + 14:pos + 18] = serial.to_bytes(4, "little")
        out[pos + 22:pos + 26] = b"\0\0\0\0"
        crc = 0
        for b in out[pos:end]:
            crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ b]
        out[pos + 22:pos + 26] = crc.to_bytes(4, "little")
        pos = end
    if pos != len(out):
        raise DataError(f"Ogg stream: unexpected bytes at offset {pos} of {len(out)}")
    return bytes(out)
