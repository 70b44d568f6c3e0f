"""One tempo and one key (or one key change) per track, from the evidence of all of its clips.

A track has one tempo and, unless it modulates, one key; clips analysed one by one scatter (a 10 s tail clip
has little evidence). Here every clip's own tempo votes with its duration, and the key
is read from the chroma of the whole track. A key change is accepted only where splitting the track in two
raises the key-profile fit of both halves clearly (`key_change_gain`) and each half lasts
`min_key_segment_s`. Each clip then gets the track's values with a confidence saying how well its own audio
supports them, and a flag where it disagrees strongly (another tempo that is not an octave of the track's,
or an unrelated key it is confident about).

No hidden prior: the style's tempo range is consulted only when the audio leaves a near-tie (clips split
between two tempi, or no clip has a beat the rhythm extractor could follow), and then `bpm_source` says
"prior". Values the user gave in sources.json win and are marked "sources.json".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lofi_lora.annotate.analysis import AnalysisOptions, ClipAnalysis
from lofi_lora.annotate.key import KeyEstimate, key_from_chroma, key_index, normalise_tonic, profile_correlations
from lofi_lora.annotate.scoring import bpm_acc1, bpm_acc2, mirex_key_score

NEAR_TIE = 0.8           # a runner-up tempo with this share of the winner's support is a near-tie
KEY_FLAG_CONFIDENCE = 0.5
SPLIT_STEP_S = 2.0


@dataclass(frozen=True)
class KeySegment:
    start_s: float
    end_s: float
    key: KeyEstimate


@dataclass(frozen=True)
class ClipVerdict:
    """A clip's share of the track's labels: its key, how well its own audio supports them, and flags."""
    keyscale: str
    tempo_confidence: float
    key_confidence: float
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrackAnalysis:
    bpm: float
    bpm_source: str              # audio | prior | sources.json
    bpm_confidence: float        # share of the track's tempo evidence behind `bpm`, 0-1
    bpm_audio: float | None      # what the audio said (kept when a given value or the prior wins)
    key_segments: list[KeySegment]
    key_source: str              # audio | sources.json
    clips: list[ClipVerdict]

    @property
    def key_change(self) -> dict[str, Any] | None:
        if len(self.key_segments) < 2:
            return None
        a, b = self.key_segments[:2]
        return {"at_s": round(b.start_s, 2), "from": a.key.keyscale, "to": b.key.keyscale}


def track_tempo(clips: Sequence[ClipAnalysis], tempo_range: tuple[float, float] | None
                ) -> tuple[float, str, float]:
    """(bpm, source, confidence) of a track from its clips' own tempi."""
    beats = [c for c in clips if c.rhythm_bpm > 0]
    if not beats:  # no followable beat anywhere: the autocorrelation's octave is a guess, so the range may pick
        c = max(clips, key=lambda c: c.duration_s)
        cands = [c.tempo.bpm, 2 * c.tempo.bpm, c.tempo.bpm / 2]
        fits = [b for b in cands if tempo_range and tempo_range[0] * 0.96 <= b <= tempo_range[1] * 1.04]
        return (fits[0], "prior", 0.0) if fits else (cands[0], "audio", 0.0)
    w = np.array([c.duration_s for c in beats])
    bpms = np.array([c.rhythm_bpm for c in beats])
    support = np.array([w[np.abs(bpms / b - 1) <= 0.04].sum() for b in bpms])
    order = np.argsort(-support)
    best = float(bpms[order[0]])
    rivals = [i for i in order if not bpm_acc1(bpms[i], best)]
    chosen, source = best, "audio"
    if rivals and support[rivals[0]] >= NEAR_TIE * support[order[0]] and tempo_range is not None:
        rival = float(bpms[rivals[0]])
        inside = lambda b: tempo_range[0] * 0.96 <= b <= tempo_range[1] * 1.04  # noqa: E731
        if inside(rival) and not inside(best):
            chosen, source = rival, "prior"
    group = np.abs(bpms / chosen - 1) <= 0.04
    value = _weighted_median(bpms[group], w[group])
    return value, source, float(w[group].sum() / w.sum())


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(x)
    cum = np.cumsum(w[o])
    return float(x[o][np.searchsorted(cum, 0.5 * cum[-1])])


def key_segments(chroma: np.ndarray, bass: np.ndarray, hop_s: float, opts: AnalysisOptions) -> list[KeySegment]:
    """The track's key, or two keys where a split raises the fit of both halves by `key_change_gain`."""
    n = chroma.shape[1]
    dur = n * hop_s
    whole = key_from_chroma(chroma, bass, opts.key_profile, opts.bass_weight, opts.candidate_margin)
    seg = int(opts.min_key_segment_s / hop_s)
    best: tuple[float, int, KeyEstimate, KeyEstimate] | None = None
    if n >= 2 * seg and seg > 0:
        k0 = key_index(whole.keyscale)
        for cut in range(seg, n - seg + 1, max(1, int(SPLIT_STEP_S / hop_s))):
            parts = [(chroma[:, :cut], bass[:, :cut]), (chroma[:, cut:], bass[:, cut:])]
            keys = [key_from_chroma(c, b, opts.key_profile, opts.bass_weight, opts.candidate_margin) for c, b in parts]
            if keys[0].keyscale == keys[1].keyscale:
                continue
            gains = []
            for (c, _), k in zip(parts, keys):
                corr = profile_correlations(c, opts.key_profile)
                gains.append(corr[key_index(k.keyscale)] - corr[k0])
            gain = (cut * gains[0] + (n - cut) * gains[1]) / n
            if min(gains) >= 0 and (best is None or gain > best[0]):
                best = (gain, cut, keys[0], keys[1])
    if best is None or best[0] < opts.key_change_gain:
        return [KeySegment(0.0, dur, whole)]
    _, cut, a, b = best
    return [KeySegment(0.0, cut * hop_s, a), KeySegment(cut * hop_s, dur, b)]


def analyse_track(clips: Sequence[ClipAnalysis], opts: AnalysisOptions = AnalysisOptions(),
                  tempo_range: tuple[float, float] | None = None, given_bpm: float | None = None,
                  given_key: str | None = None) -> TrackAnalysis:
    """Track-level labels for `clips` (in playing order) and each clip's verdict."""
    bpm_audio, source, conf = track_tempo(clips, tempo_range)
    bpm = bpm_audio
    if given_bpm is not None:
        bpm, source, conf = float(given_bpm), "sources.json", 1.0
    hop = clips[0].chroma_hop_s
    if given_key is not None:
        tonic, mode = given_key.split()
        given = KeyEstimate(normalise_tonic(tonic), mode.lower(), 1.0, 1.0)
        segments = [KeySegment(0.0, sum(c.chroma.shape[1] * hop for c in clips), given)]
        key_source = "sources.json"
    else:
        segments = key_segments(np.concatenate([c.chroma for c in clips], axis=1),
                                np.concatenate([c.bass_chroma for c in clips], axis=1), hop, opts)
        key_source = "audio"
    verdicts, t = [], 0.0
    for c in clips:
        mid = t + 0.5 * c.chroma.shape[1] * hop
        t += c.chroma.shape[1] * hop
        key = next((s.key for s in segments if s.start_s <= mid < s.end_s), segments[-1].key)
        corr = profile_correlations(c.chroma, opts.key_profile)
        kconf = float(np.clip(1 - (corr.max() - corr[key_index(key.keyscale)]) / 0.2, 0, 1)) if corr.any() else 0.0
        flags = []
        if c.rhythm_bpm > 0 and not bpm_acc2(c.rhythm_bpm, bpm):
            flags.append(f"tempo {c.rhythm_bpm:.1f} vs track {bpm:.1f}")
        if c.key.confidence >= KEY_FLAG_CONFIDENCE and mirex_key_score(c.key.keyscale, key.keyscale) == 0:
            flags.append(f"key {c.key.keyscale} vs track {key.keyscale}")
        verdicts.append(ClipVerdict(key.keyscale, round(c.beat_strength(bpm), 3), round(kconf, 3), flags))
    return TrackAnalysis(bpm, source, round(conf, 3), bpm_audio, segments, key_source, verdicts)
