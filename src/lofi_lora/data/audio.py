"""Audio I/O: the only module that reads or writes audio files.

Decoding goes through libsndfile (wav, flac, ogg, mp3) and falls back to the ffmpeg binary shipped in the
`imageio-ffmpeg` wheel for containers libsndfile cannot read (m4a/aac). ffmpeg is called with an argument
list, never a shell string. Every write is atomic.
"""
from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from lofi_lora.data import downmix
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
        sr, ch, duration = _probe_ffmpeg(path)
        return AudioInfo(sr, ch, int(round(duration * sr)), path.suffix.lower().lstrip("."))
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


# ffmpeg's channel layout names -> channel count (its decoder reorders to the WAV order).
_FFMPEG_LAYOUTS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "4.1": 5, "5.0": 5,
                   "5.0(side)": 5, "5.1": 6, "5.1(side)": 6, "6.0": 6, "6.1": 7, "7.0": 7, "7.1": 8, "7.1(wide)": 8}


def _probe_ffmpeg(path: Path) -> tuple[int, int, float]:
    """(sample rate, channels, duration s) from ffmpeg's header report, without decoding."""
    exe = ffmpeg_exe()
    if exe is None:
        raise DataError(f"{path}: {path.suffix} needs ffmpeg, which is not available (pip install imageio-ffmpeg)")
    probe = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    found = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", probe.stderr)
    duration = int(found[1]) * 3600 + int(found[2]) * 60 + float(found[3]) if found else 0.0
    for line in probe.stderr.splitlines():
        if "Audio:" in line:
            parts = [p.strip() for p in line.split("Audio:", 1)[1].split(",")]
            sr = next((int(p.split()[0]) for p in parts if p.endswith(" Hz")), 48000)
            counted = [int(p.split()[0]) for p in parts if re.fullmatch(r"\d+ channels", p)]
            ch = next((_FFMPEG_LAYOUTS[p] for p in parts if p in _FFMPEG_LAYOUTS), counted[0] if counted else 2)
            return sr, ch, duration
    raise DataError(f"{path}: ffmpeg finds no audio stream ({probe.stderr.strip().splitlines()[-1:]})")


def _ffmpeg_command(path: Path, sr: int, ch: int, start_s: float = 0.0, seconds: float | None = None) -> list[str]:
    """Decode to f32le on stdout; more than two channels are downmixed by ffmpeg (centre and surrounds at -3 dB,
    LFE left out: its standard matrix)."""
    cmd = [ffmpeg_exe() or "ffmpeg", "-v", "error"]
    if start_s > 0:
        cmd += ["-ss", f"{start_s:.6f}"]
    if seconds is not None:
        cmd += ["-t", f"{seconds:.6f}"]
    return cmd + ["-i", str(path), "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(min(ch, 2)), "-ar", str(sr), "-"]


def _read_ffmpeg(path: Path, dtype: str) -> tuple[np.ndarray, int]:
    sr, ch, _ = _probe_ffmpeg(path)
    proc = subprocess.run(_ffmpeg_command(path, sr, ch), capture_output=True)
    if proc.returncode != 0 or not proc.stdout:
        raise DataError(f"{path}: ffmpeg cannot decode ({proc.stderr.decode(errors='replace').strip()[-300:]})")
    data = np.frombuffer(proc.stdout, dtype=np.float32).reshape(-1, min(ch, 2)).T.astype(dtype)
    return np.ascontiguousarray(data), sr


def speakers(path: str | Path, channels: int) -> tuple[str, ...]:
    """The file's channel layout: a WAV's channel mask, else the format's order for the count."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in FFMPEG_EXTS:
        return downmix.layout(min(channels, 2))  # ffmpeg has downmixed already
    mask = downmix.wav_channel_mask(path) if ext == ".wav" else None
    return downmix.layout(channels, mask, vorbis=ext == ".ogg")


MAX_BLOCK_SECONDS = 60.0
MAX_BLOCK_SAMPLES = 1 << 23  # over all channels: 32 MiB of float32 per decoded block


def blocks(path: str | Path, start: int = 0,
           stop: int | None = None) -> Iterator[tuple[np.ndarray, int, tuple[str, ...]]]:
    """`([channels, frames] float32, sample rate, speakers)` blocks of frames `[start, stop)` at the native rate,
    with the file's channel layout (downmix.py; ffmpeg's formats come downmixed to stereo already). Memory is one
    block, whatever the length.

    Raises:
        DataError: the file cannot be decoded, or the range holds no frames.
    """
    path = Path(path)
    n = 0
    try:
        if path.suffix.lower() in FFMPEG_EXTS:
            sr, ch, _ = _probe_ffmpeg(path)
            for block in _ffmpeg_blocks(path, sr, ch, start, stop):
                n += block.shape[1]
                yield np.ascontiguousarray(block), sr, downmix.layout(block.shape[0])
        else:
            with sf.SoundFile(str(path)) as f:
                sr, ch = int(f.samplerate), int(f.channels)
                layout = speakers(path, ch)
                size = max(1024, min(int(MAX_BLOCK_SECONDS * sr), MAX_BLOCK_SAMPLES // ch))
                f.seek(start)
                total = (stop if stop is not None else f.frames) - start
                for block in f.blocks(size, frames=total, dtype="float32", always_2d=True):
                    n += block.shape[0]
                    yield np.ascontiguousarray(block.T), sr, layout
    except DataError:
        raise
    except Exception as e:  # libsndfile/ffmpeg errors in the middle of a file
        raise DataError(f"{path}: cannot decode ({e})") from e
    if n == 0:
        raise DataError(f"{path}: no audio frames")


def _ffmpeg_blocks(path: Path, sr: int, ch: int, start: int, stop: int | None) -> Iterator[np.ndarray]:
    out_ch = min(ch, 2)
    cmd = _ffmpeg_command(path, sr, ch, start / sr, None if stop is None else (stop - start) / sr)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        size = int(MAX_BLOCK_SECONDS * sr) * out_ch * 4
        while chunk := proc.stdout.read(size):
            yield np.frombuffer(chunk[: len(chunk) // (4 * out_ch) * 4 * out_ch], np.float32).reshape(-1, out_ch).T
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise DataError(f"{path}: ffmpeg cannot decode ({err[-300:]})")
    finally:
        proc.kill()
        proc.wait()


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality resampling (soxr VHQ) of `[channels, frames]`."""
    if sr_in == sr_out:
        return audio
    import soxr

    return np.ascontiguousarray(soxr.resample(audio.T, sr_in, sr_out, quality="VHQ").T.astype(audio.dtype))


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Mono -> duplicated stereo; more than two channels -> the BS.775 stereo downmix of the count's default
    layout (downmix.py; `stereo_blocks` uses the file's own layout); 1 channel -> the mean."""
    if audio.shape[0] == channels:
        return audio
    if audio.shape[0] > 2:
        audio = downmix.to_stereo(audio, downmix.layout(audio.shape[0]))
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
