"""One clip's musical attributes: tempo, key, meter and events, from audio in memory."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lofi_lora.annotate.events import Event, segment
from lofi_lora.annotate.features import ANALYSIS_SR, compute_features, to_analysis_mono
from lofi_lora.annotate.key import KeyEstimate, estimate_key
from lofi_lora.annotate.tempo import TempoEstimate, estimate_beats_per_bar, estimate_tempo


@dataclass(frozen=True)
class AnalysisOptions:
    key_profile: str = "temperley"
    bass_weight: float = 1.0
    start_weight: float = 0.5      # opening-bar tonic cue; only for clips that open their track
    candidate_margin: float = 0.25
    min_event_s: float = 2.5
    novelty_threshold: float = 0.25

    def for_clip(self, opens_track: bool) -> "AnalysisOptions":
        """A clip cut from the middle of a track need not open a phrase: no opening-bar cue for it."""
        return self if opens_track else replace(self, start_weight=0.0)

    @classmethod
    def from_cfg(cls, cfg: Any) -> "AnalysisOptions":
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        return cls(**{k: type(v)(get(k, v)) for k, v in cls().__dict__.items()})


@dataclass(frozen=True)
class ClipAnalysis:
    duration_s: float
    tempo: TempoEstimate
    key: KeyEstimate
    beats_per_bar: int
    meter_confidence: float
    events: list[Event] = field(default_factory=list)
    analysis_s: float = 0.0

    def rich_details(self) -> dict[str, Any]:
        """Confidences and raw estimates kept in the sidecar's source.rich_details."""
        return {
            "bpm_confidence": round(float(self.tempo.confidence), 3),
            "bpm_unweighted": round(float(self.tempo.unweighted_bpm), 2),
            "key_confidence": round(float(self.key.confidence), 3),
            "key_correlation": round(float(self.key.correlation), 3),
            "beats_per_bar_estimate": int(self.beats_per_bar),
            "meter_confidence": round(float(self.meter_confidence), 3),
        }


def analyze(audio: np.ndarray, sr: int, tempo_range: tuple[float, float],
            opts: AnalysisOptions = AnalysisOptions()) -> ClipAnalysis:
    """Estimate a clip's attributes; `audio` is `[channels, frames]` or `[frames]` at `sr`."""
    t0 = time.perf_counter()
    y = to_analysis_mono(audio, sr)
    feats = compute_features(y, ANALYSIS_SR)
    tempo = estimate_tempo(feats, tempo_range)
    bpb, meter_conf = estimate_beats_per_bar(feats, tempo.beat_period_s)  # cheap; used if annotate asks
    key = estimate_key(feats, opts.key_profile, opts.bass_weight, start_s=bpb * tempo.beat_period_s,
                       start_weight=opts.start_weight, candidate_margin=opts.candidate_margin)
    events = segment(feats, tempo.beat_period_s, opts.min_event_s, opts.novelty_threshold)
    return ClipAnalysis(feats.duration_s, tempo, key, bpb, meter_conf, events, time.perf_counter() - t0)
