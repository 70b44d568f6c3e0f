"""Tempo of a clip: essentia's RhythmExtractor2013 (Degara beat tracker) for the metrical level, and the onset
envelope's autocorrelation for its strength and, where essentia finds no beat, as a fallback.

The metrical level (which octave is "the beat") comes from the audio alone: on held-out FluidSynth lofi with
swing at 60-100 BPM the Degara tracker scored Acc1 1.00 with no range given, where the autocorrelation
salience below locked onto half time on half the tracks (benchmarks/NOTES.md). A style's tempo range is
used only by `lofi_lora.annotate.track` to break a near-tie between octaves, never here. The salience
curve sums the autocorrelation at the beat, half-bar and bar lags and is refined on the bar lag by
parabolic interpolation, which gives sub-percent precision from an 11.6 ms hop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lofi_lora.core import librosa_guard
from lofi_lora.annotate.features import Features

librosa = librosa_guard.load()  # numba cache: see lofi_lora.core.librosa_guard

MIN_BPM, MAX_BPM = 30.0, 240.0
PRIOR_SIGMA_OCT = 0.25  # log2 width of the fall-off outside the tempo range (5 % outside -> 0.96, x1.5 -> 0.07)
BPM_GRID = np.arange(MIN_BPM, MAX_BPM, 0.1)


@dataclass(frozen=True)
class TempoEstimate:
    bpm: float
    confidence: float        # salience of the chosen peak relative to the strongest peak, 0-1
    unweighted_bpm: float    # the strongest periodicity with no style prior (for traceability)
    beat_period_s: float


def _prior(bpm: np.ndarray, lo: float, hi: float) -> np.ndarray:
    d = np.maximum(np.log2(lo / bpm), 0) + np.maximum(np.log2(bpm / hi), 0)
    return np.exp(-0.5 * (d / PRIOR_SIGMA_OCT) ** 2)


def log_range_prior(bpm: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Log of the tempo range prior: 0 inside [lo, hi], a log-normal fall-off (PRIOR_SIGMA_OCT) outside."""
    return np.log(np.maximum(_prior(bpm, lo, hi), 1e-12))


def metrical_salience(ac: np.ndarray, hop_s: float, bpm: np.ndarray = BPM_GRID, bar: int = 4) -> np.ndarray:
    """How well each tempo in `bpm` explains the onsets: their normalised autocorrelation `ac` (hop `hop_s`)
    summed at the beat, half-bar and bar lags (1, 2 and 4 beats; with `bar=3`, 1, 3 and 6). A beat that the onsets'
    grid merely crosses (three sixteenths of a reel, a jig's quarter) peaks at its own lag but not at its bar. A lag
    beyond `ac` (a short clip) counts the beat lag again."""
    lag = 60.0 / (bpm * hop_s)
    idx = np.arange(len(ac))
    beat = np.interp(lag, idx, ac)
    at = lambda k: np.where(k * lag <= len(ac) - 1, np.interp(k * lag, idx, ac), beat)  # noqa: E731
    duple = beat + at(2) + at(4)
    if bar == 4:
        return duple
    # A 3-beat bar explains the same bar lag as 2 beats at two thirds the tempo; only the beat itself tells them
    # apart, so it counts only where the beat repeats at least as well as the two-thirds level's (1.5 beats).
    return np.where(beat >= at(1.5), beat + at(3) + at(6), duple)


def _parabolic(ac: np.ndarray, i: int) -> float:
    if 0 < i < len(ac) - 1:
        a, b, c = ac[i - 1], ac[i], ac[i + 1]
        den = a - 2 * b + c
        if den < 0:
            return i + 0.5 * (a - c) / den
    return float(i)


def _autocorr(env: np.ndarray, max_lag: int) -> np.ndarray:
    e = env - env.mean()
    ac = librosa.autocorrelate(e, max_size=max_lag + 1)
    return ac / ac[0] if ac[0] > 0 else np.zeros_like(ac)


def rhythm_bpm(y44: np.ndarray) -> float:
    """BPM of mono float32 audio at 44.1 kHz by essentia's RhythmExtractor2013 (method degara); 0.0 when it
    finds fewer than four beats (silence, a beatless pad). The Degara tracker weights periods near 0.5 s, so a
    slow track with straight, evenly played eighths (no swing, no accent) can come out at double tempo."""
    import essentia
    import essentia.standard as es

    essentia.log.infoActive = False
    if y44.size < 44100 * 3:
        return 0.0
    bpm, ticks = es.RhythmExtractor2013(method="degara")(np.ascontiguousarray(y44, dtype=np.float32))[:2]
    return float(bpm) if len(ticks) >= 4 and MIN_BPM <= bpm <= MAX_BPM else 0.0


def estimate_tempo(feats: Features, tempo_range: tuple[float, float] = (MIN_BPM, MAX_BPM)) -> TempoEstimate:
    """BPM of a clip whose style allows `tempo_range` (lo, hi).

    Salience of a beat period L is the onset autocorrelation summed at L, 2L and 4L (beat, half bar, bar),
    from the full-band and the low-band (kick, bass) envelopes: sparse ambient drums show their period at
    the bar lag even when single beats drown in rain and crackle.
    """
    hop_s = feats.onset_hop_s
    max_lag = min(len(feats.onset_env) - 1, int(np.ceil(4 * 60.0 / MIN_BPM / hop_s)) + 2)
    ac = 0.5 * (_autocorr(feats.onset_env, max_lag) + _autocorr(feats.onset_env_low, max_lag))
    if not np.any(ac[1:] > 0):
        lo, hi = tempo_range
        mid = float(np.sqrt(lo * hi))
        return TempoEstimate(mid, 0.0, mid, 60.0 / mid)
    bpm = BPM_GRID
    lag = 60.0 / (bpm * hop_s)
    salience = metrical_salience(ac, hop_s, bpm)
    unweighted = int(np.argmax(salience))
    weighted = salience + np.log(np.maximum(_prior(bpm, *tempo_range), 1e-12))
    best = int(np.argmax(weighted))
    period_frames = float(lag[best])
    # Refine on the longest multiple of the beat that fits (bar lag): the relative error shrinks by k.
    for k in (4, 2, 1):
        centre = int(round(k * period_frames))
        if centre + 3 < len(ac):
            j = centre - 2 + int(np.argmax(ac[centre - 2: centre + 3]))
            cand = _parabolic(ac, j) / k
            if abs(cand - period_frames) / period_frames < 0.02:
                period_frames = cand
                break
    period_s = period_frames * hop_s
    top = float(salience.max())
    conf = float(np.clip(salience[best] / top, 0.0, 1.0)) if top > 0 else 0.0
    return TempoEstimate(60.0 / period_s, conf, float(bpm[unweighted]), period_s)


def estimate_beats_per_bar(feats: Features, beat_period_s: float, candidates: tuple[int, ...] = (3, 4)) -> tuple[int, float]:
    """Meter from low-band (kick/bass) accents: which bar length, in beats, repeats most strongly.

    Returns (beats_per_bar, confidence 0-1 as the margin between the two best candidates).
    """
    env = feats.onset_env_low - feats.onset_env_low.mean()
    lag_beat = beat_period_s / feats.onset_hop_s
    need = int(max(candidates) * 2 * lag_beat) + 3
    if need >= len(env) or np.allclose(env, 0):
        return max(candidates), 0.0
    ac = librosa.autocorrelate(env, max_size=need + 1)
    ac = ac / max(ac[0], 1e-12)

    def at(lag: float) -> float:
        i = int(round(lag))
        return float(np.max(ac[max(i - 1, 0): i + 2]))

    # A bar of b beats repeats at b and 2b beats; the off-bar lags in between should be weaker.
    scores = {b: at(b * lag_beat) + at(2 * b * lag_beat) - at((b - 0.5) * lag_beat) for b in candidates}
    ranked = sorted(scores, key=scores.get, reverse=True)
    margin = scores[ranked[0]] - scores[ranked[1]] if len(ranked) > 1 else 1.0
    return ranked[0], float(np.clip(margin, 0.0, 1.0))
