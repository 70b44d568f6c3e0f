"""One clip's musical evidence: tempo, key, meter, events, and what the track-level step needs from it.

A clip is analysed on its own (in a worker process); `lofi_lora.annotate.track` then combines the clips of a
track into one tempo and one key (or a key change), so every value here is evidence, not the final label.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lofi_lora.annotate.events import Event, segment
from lofi_lora.annotate.features import ANALYSIS_SR, compute_features, to_analysis_mono
from lofi_lora.annotate.key import KeyEstimate
from lofi_lora.annotate.tonality import TonalWeights, evidence
from lofi_lora.annotate.tempo import (MIN_BPM, TempoEstimate, _autocorr, estimate_beats_per_bar,
                                      estimate_tempo, rhythm_bpm)

RHYTHM_SR = 44100  # essentia's rhythm extractor assumes this rate


@dataclass(frozen=True)
class AnalysisOptions:
    key_profile: str = "temperley"
    bass_weight: float = 1.0
    min_event_s: float = 2.5
    novelty_threshold: float = 0.25
    key_change_gain: float = 0.3     # key-score gain two halves must show to count as a key change
    min_key_segment_s: float = 15.0  # shortest stretch in one key that counts as a key change
    tempo_lo: float = 60.0           # the music's usual tempo range (conf annotate.tempo_range): an octave
    tempo_hi: float = 100.0          # outside it is folded in when the beat grid fits both equally
    tracker_margin: float = 0.1      # the onsets' best tempo must beat the tracker's best octave by this (salience)

    def tonal_weights(self) -> TonalWeights:
        return TonalWeights(bass=self.bass_weight, profile_name=self.key_profile)

    @classmethod
    def from_cfg(cls, cfg: Any) -> "AnalysisOptions":
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        rng = get("tempo_range", None) or (cls.tempo_lo, cls.tempo_hi)
        if len(rng) != 2 or not 0 < float(rng[0]) < float(rng[1]):
            raise ValueError(f"annotate.tempo_range: want [low, high] BPM with 0 < low < high, got {list(rng)}")
        lo, hi = rng
        given = {k: type(v)(get(k, v)) for k, v in cls().__dict__.items() if k not in ("tempo_lo", "tempo_hi")}
        return cls(**given, tempo_lo=float(lo), tempo_hi=float(hi))


@dataclass(frozen=True)
class ClipAnalysis:
    duration_s: float
    tempo: TempoEstimate           # onset-autocorrelation estimate (no range): fallback and traceability
    rhythm_bpm: float              # essentia RhythmExtractor2013 on this clip; 0.0 when it found no beat
    key: KeyEstimate               # this clip's own key, before the track decides
    beats_per_bar: int
    meter_confidence: float
    chroma: np.ndarray             # [12, T] at chroma_hop_s: the track's key and key changes are read from these
    bass_chroma: np.ndarray
    chroma_hop_s: float
    onset_ac: np.ndarray           # onset autocorrelation up to the 30 BPM bar (4 beats): the clip's pulse at any tempo
    onset_hop_s: float
    events: list[Event] = field(default_factory=list)
    analysis_s: float = 0.0

    @property
    def own_bpm(self) -> float:
        return self.rhythm_bpm or self.tempo.bpm

    def beat_strength(self, bpm: float) -> float:
        """Onset autocorrelation at the beat lag of `bpm` (best within +-2 %), 0-1."""
        lag = 60.0 / bpm / self.onset_hop_s
        lo, hi = int(np.floor(lag * 0.98)), int(np.ceil(lag * 1.02)) + 1
        if lo >= len(self.onset_ac):
            return 0.0
        return float(np.clip(self.onset_ac[lo: hi + 1].max(), 0.0, 1.0))


def analyze(audio: np.ndarray, sr: int, opts: AnalysisOptions = AnalysisOptions()) -> ClipAnalysis:
    """Estimate a clip's attributes; `audio` is `[channels, frames]` or `[frames]` at `sr`."""
    t0 = time.perf_counter()
    y = to_analysis_mono(audio, sr)
    feats = compute_features(y, ANALYSIS_SR)
    tempo = estimate_tempo(feats)
    mono = np.asarray(audio, dtype=np.float32)
    mono = mono.mean(axis=0) if mono.ndim == 2 else mono
    if sr != RHYTHM_SR:
        from lofi_lora.core.librosa_guard import load
        librosa = load()

        mono = librosa.resample(mono, orig_sr=sr, target_sr=RHYTHM_SR, res_type="soxr_hq")
    rbpm = rhythm_bpm(mono)
    beat_s = 60.0 / (rbpm or tempo.bpm)
    bpb, meter_conf = estimate_beats_per_bar(feats, beat_s)
    key = evidence(feats.chroma, feats.bass_chroma, feats.chroma_hop_s, beat_s, opts.tonal_weights()).key()[0]
    events = segment(feats, beat_s, opts.min_event_s, opts.novelty_threshold)
    max_lag = min(len(feats.onset_env) - 1, int(np.ceil(4 * 60.0 / MIN_BPM / feats.onset_hop_s * 1.03)) + 2)
    ac = 0.5 * (_autocorr(feats.onset_env, max_lag) + _autocorr(feats.onset_env_low, max_lag)) if max_lag > 0 \
        else np.zeros(1)
    return ClipAnalysis(feats.duration_s, tempo, rbpm, key, bpb, meter_conf, feats.chroma.astype(np.float32),
                        feats.bass_chroma.astype(np.float32), feats.chroma_hop_s, ac.astype(np.float32),
                        feats.onset_hop_s, events, time.perf_counter() - t0)
