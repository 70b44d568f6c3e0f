"""Audio features shared by the tempo, key and event estimators, computed once per clip.

Everything comes from two short-time Fourier transforms with cached filter banks (mel for onsets and
timbre, a semitone bank for pitch), which keeps annotate far above 100x realtime on one core.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lofi_lora.core import librosa_guard

librosa = librosa_guard.load()  # numba cache: see lofi_lora.core.librosa_guard

ANALYSIS_SR = 22050
ONSET_NFFT, ONSET_HOP = 1024, 256   # ~11.6 ms hop at 22.05 kHz: tempo to well under 1 %
N_MELS = 64
PITCH_SR = 11025                   # pitch analysis band: up to 5.5 kHz is plenty for harmony
PITCH_NFFT, PITCH_HOP = 16384, 1024  # 0.67 Hz bins resolve semitones down to C1; ~93 ms hop
MIDI_LO, N_SEMITONES = 24, 84        # C1 .. B7


@dataclass(frozen=True)
class Features:
    """Per-clip features. Shapes: onset_env [T_o], chroma/bass_chroma (lowest-note pitch class) [12, T_c], mfcc [13, T_o], rms_db [T_o]."""

    sr: int
    duration_s: float
    onset_env: np.ndarray
    onset_env_low: np.ndarray   # onsets below ~200 Hz: kick/bass accents, for the meter
    chroma: np.ndarray
    bass_chroma: np.ndarray
    mfcc: np.ndarray
    rms_db: np.ndarray

    @property
    def onset_hop_s(self) -> float:
        return ONSET_HOP / self.sr

    @property
    def chroma_hop_s(self) -> float:
        return PITCH_HOP / PITCH_SR


def to_analysis_mono(audio: np.ndarray, sr: int) -> np.ndarray:
    """`[channels, frames]` or `[frames]` at any rate -> mono float32 at ANALYSIS_SR."""
    y = np.asarray(audio, dtype=np.float32)
    if y.ndim == 2:
        y = y.mean(axis=0)
    if sr != ANALYSIS_SR:
        y = librosa.resample(y, orig_sr=sr, target_sr=ANALYSIS_SR, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _mel_basis(sr: int) -> np.ndarray:
    return librosa.filters.mel(sr=sr, n_fft=ONSET_NFFT, n_mels=N_MELS, fmax=sr / 2).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _semitone_basis(sr: int):
    """[N_SEMITONES, bins] raised-cosine weights of each FFT bin to its nearest equal-tempered semitone."""
    freqs = librosa.fft_frequencies(sr=sr, n_fft=PITCH_NFFT)
    with np.errstate(divide="ignore"):
        midi = 69 + 12 * np.log2(np.maximum(freqs, 1e-6) / 440.0)
    basis = np.zeros((N_SEMITONES, len(freqs)), dtype=np.float32)
    for k in range(N_SEMITONES):
        d = midi - (MIDI_LO + k)
        inside = np.abs(d) < 0.5
        basis[k, inside] = np.cos(np.pi * d[inside]) ** 2
    import scipy.sparse

    return scipy.sparse.csr_matrix(basis)  # each bin feeds one semitone: sparse product is ~100x cheaper


def lowest_note_chroma(semis: np.ndarray, rel_db: float = -18.0) -> np.ndarray:
    """[12, T] one-hot pitch class of each frame's lowest prominent note (a narrow peak within `rel_db` of
    the frame's strongest semitone), weighted by the frame's level: the bass note, or the chord root."""
    T = semis.shape[1]
    out = np.zeros((12, T), dtype=np.float32)
    if T == 0:
        return out
    peak = semis.max(axis=0)
    level = peak / (peak.max() + 1e-20)
    # A pitched note is a narrow peak: well above the semitones two steps away. A kick drum's thud spreads
    # over several semitones and so does not count as the lowest note, however low it sits.
    local = np.zeros_like(semis, dtype=bool)
    local[2:-2] = ((semis[2:-2] >= semis[1:-3]) & (semis[2:-2] >= semis[3:-1])
                   & (semis[2:-2] > 4.0 * np.maximum(semis[:-4], semis[4:])))
    strong = local & (semis >= peak[None] * 10 ** (rel_db / 10))
    has = strong.any(axis=0)
    lowest = np.argmax(strong, axis=0)
    cols = np.nonzero(has)[0]
    out[(MIDI_LO + lowest[cols]) % 12, cols] = np.sqrt(level[cols])
    return out


def compute_features(y: np.ndarray, sr: int = ANALYSIS_SR) -> Features:
    """Features of a mono signal at ANALYSIS_SR."""
    duration_s = len(y) / sr
    power = np.abs(librosa.stft(y, n_fft=ONSET_NFFT, hop_length=ONSET_HOP)) ** 2
    mel = _mel_basis(sr) @ np.ascontiguousarray(power)
    mel_db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    onset_env = librosa.onset.onset_strength(S=mel_db, sr=sr, hop_length=ONSET_HOP)
    low_bands = int(np.searchsorted(librosa.mel_frequencies(N_MELS + 2, fmax=sr / 2)[1:-1], 200.0))
    onset_low = librosa.onset.onset_strength(S=mel_db[: max(low_bands, 2)], sr=sr, hop_length=ONSET_HOP)
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=13)
    rms_db = librosa.power_to_db(np.maximum(mel.sum(axis=0), 1e-12), ref=1.0)
    y_pitch = librosa.resample(y, orig_sr=sr, target_sr=PITCH_SR, res_type="soxr_hq")
    spec = np.abs(librosa.stft(y_pitch, n_fft=PITCH_NFFT, hop_length=PITCH_HOP, center=True)) ** 2
    semis = np.asarray(_semitone_basis(PITCH_SR) @ spec)                     # [84, T_c], semitone k = MIDI 24 + k
    bass = lowest_note_chroma(semis)
    full = semis.reshape(N_SEMITONES // 12, 12, -1).sum(axis=0)
    return Features(sr, duration_s, onset_env, onset_low, full, bass, mfcc, rms_db)
