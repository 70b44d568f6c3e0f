"""One tempo and one key (or one key change) per track, from the evidence of all of its clips.

A track has one tempo and, unless it modulates, one key; clips analysed one by one scatter (a 10 s tail clip
has little evidence). Here every clip's own tempo votes with its duration, and the key is read from the tonal
function of the whole track's chords (`tonality`). A key change is accepted only where splitting the track in
two raises the key score of both halves clearly (`key_change_gain`) and each half lasts `min_key_segment_s`.
Each clip then gets the track's values with a confidence saying how well its own audio supports them, and a
flag where it disagrees strongly (another tempo that is not an octave of the track's, or an unrelated key it is
confident about).

No hidden prior: the style's tempo range is consulted only when the audio leaves a near-tie (clips split
between two tempi, or no clip has a beat the rhythm extractor could follow), and then `bpm_source` says
"prior". Independently of any style, the metrical level is then checked against the onsets' beat and bar
periodicity with the music's usual range as a prior (`tempo_range` in conf annotate: 60-100 for lofi): a
tracked tempo is moved by an octave where that fits about as well and lies nearer the range (`bpm_source`
"range", 126 -> 63), or replaced where the onsets clearly fit another level (`bpm_source` "onsets": four
thirds of a drumless reel's beat); where the fits were close, every clip's flags say so, as they do for a key
whose margin over the runner-up is small. Values the user gave in sources.json win and are marked "sources.json".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lofi_lora.annotate.analysis import AnalysisOptions, ClipAnalysis
from lofi_lora.annotate.key import KeyEstimate, key_index, normalise_tonic
from lofi_lora.annotate.tonality import Evidence, evidence
from lofi_lora.annotate.scoring import bpm_acc1, bpm_acc2, mirex_key_score
from lofi_lora.annotate.tempo import BPM_GRID, log_range_prior, metrical_salience

NEAR_TIE = 0.8           # a runner-up tempo with this share of the winner's support is a near-tie
KEY_FLAG_CONFIDENCE = 0.5
KEY_CLOSE = 0.1          # a track key whose margin over the runner-up is below this (0-1) is flagged as close
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
    bpm_source: str              # audio | prior | range (octave moved into tempo_range) | onsets | sources.json
    bpm_confidence: float        # share of the track's tempo evidence behind `bpm`, 0-1
    bpm_audio: float | None      # what the beat tracker said (kept when a given value, the prior or the range wins)
    key_segments: list[KeySegment]
    key_source: str              # audio | sources.json
    clips: list[ClipVerdict]
    octave: "OctaveChoice | None" = None   # set where the tempo is not the tracker's reading (range, onsets)

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


@dataclass(frozen=True)
class OctaveChoice:
    """The tempo level question of a track where the chosen tempo is not the beat tracker's own reading."""
    chosen: float
    other: float         # the tracker's reading
    fit_ratio: float     # onset metrical salience at the chosen tempo over that at the tracker's (no range prior)
    close: bool          # the two within `OCTAVE_CLOSE` of each other: the range, not the audio, decided

    def flag(self) -> str:
        return f"tempo octave close: {self.chosen:.1f} over {self.other:.1f} (beat fit ratio {self.fit_ratio:.2f})"


OCTAVE_CLOSE = 0.15
# A reading at 4/3 of the beat (the dotted-eighth pulse of a 3+3+2 groove) is tested against 3/4 of it and that
# level's octave: the alternative wins where its bar lag (4 beats) repeats clearly better than the reading's and
# its metrical salience trails by at most TERNARY_SLACK. Chosen on the tuning sets (synco, gm, synth, chorales-A):
# any BAR_MARGIN 0.15-0.3 gave the same scores there (0.05 and 0.1 broke a chorale, 0.4 missed a 3+3+2 track), any
# slack from 0.2 up (0.1 missed a 3+3+2 track); the middle of each range is kept.
TERNARY = (0.75, 1.5)
BAR_MARGIN = 0.2
TERNARY_SLACK = 0.3
REFINE = 0.1             # a moved tempo is read off the salience peak within +-10 % of the tracker's octave


def bar_fit(clips: Sequence[ClipAnalysis], w: np.ndarray, bpm: float) -> float:
    """Duration-weighted onset autocorrelation at the bar lag (4 beats) of `bpm`; a clip too short for it counts
    its beat lag."""
    out = 0.0
    for wi, c in zip(w, clips):
        lag = 60.0 / (bpm * c.onset_hop_s)
        k = 4 if 4 * lag <= len(c.onset_ac) - 1 else 1
        out += wi * float(np.interp(k * lag, np.arange(len(c.onset_ac)), c.onset_ac))
    return out


def choose_tempo_level(clips: Sequence[ClipAnalysis], bpm: float, lo: float, hi: float, margin: float
                       ) -> tuple[float, str, OctaveChoice | None]:
    """(bpm, source, choice): which metrical level of the music is its beat.

    Every tempo is scored by the clips' onset metrical salience (beat, half-bar and bar lags, duration-weighted)
    plus the log prior of the range [lo, hi]. The tracker's reading `bpm` or its best-scoring octave is kept
    (source "audio" or "range") unless the best tempo overall beats it by `margin` (source "onsets"): a beat
    tracker on music without drums locks onto a pulse that the notes' grid crosses but the bar does not (four
    thirds of a reel's beat, three halves of a jig's), which an octave fold cannot mend. Drums in a 3+3+2 groove
    (most hits on off-beat sixteenths) lead it to the same four thirds with a salience close to the beat's, so
    that level is then compared with 3/4 of it on the bar lag alone (`bar_fit`, TERNARY above; source "onsets").
    The tracker's own levels may also be explained by a 3-beat bar (`metrical_salience(bar=3)`): an oom-pah-pah's
    bar is two beats at two thirds its tempo, or four at four thirds, which the 4-beat salience alone preferred.
    """
    w = np.array([c.duration_s for c in clips], dtype=float)
    w /= max(w.sum(), 1e-9)
    raw = sum(wi * metrical_salience(c.onset_ac, c.onset_hop_s) for wi, c in zip(w, clips))
    prior = log_range_prior(BPM_GRID, lo, hi)
    score = raw + prior
    triple = sum(wi * metrical_salience(c.onset_ac, c.onset_hop_s, bar=3) for wi, c in zip(w, clips))
    keep = np.maximum(raw, triple) + prior  # the tracker's levels: either bar
    at = lambda b: int(np.clip(round((b - BPM_GRID[0]) / 0.1), 0, len(BPM_GRID) - 1))  # noqa: E731
    octaves = [bpm * 2.0 ** k for k in range(-2, 3) if BPM_GRID[0] <= bpm * 2.0 ** k <= BPM_GRID[-1]] or [bpm]
    # Each octave is read off its salience peak within +-REFINE: the bar-lag term makes peaks sharper than the
    # tracker's precision, so the value at the reading itself would understate it.
    peaks = []
    for b in octaves:
        near = (BPM_GRID >= b / (1 + REFINE)) & (BPM_GRID <= b * (1 + REFINE))
        peaks.append(float(BPM_GRID[near][np.argmax(score[near])]) if near.any() else b)
    level = max(peaks, key=lambda b: keep[at(b)])
    best = int(np.argmax(score))
    if keep[at(level)] >= score[best] - margin:
        chosen, source = level, "range"
    else:
        chosen, source = float(BPM_GRID[best]), "onsets"
    # A 3+3+2 groove: the dotted-eighth pulse fits the beat and the half bar, only the quarter fits the bar.
    alts = []
    for r in TERNARY:
        near = (BPM_GRID >= chosen * r / (1 + REFINE)) & (BPM_GRID <= chosen * r * (1 + REFINE))
        if near.any():
            alt = float(BPM_GRID[near][np.argmax(score[near])])
            if score[at(alt)] >= score[at(chosen)] - TERNARY_SLACK:
                alts.append((bar_fit(clips, w, alt), alt))
    if alts and max(alts)[0] >= bar_fit(clips, w, chosen) + BAR_MARGIN:
        chosen, source = max(alts)[1], "onsets"
    if source == "range" and bpm_acc1(chosen, bpm):
        return bpm, "audio", None
    ratio = float(raw[at(chosen)] / raw[at(bpm)]) if raw[at(bpm)] > 0 else 1.0
    return chosen, source, OctaveChoice(round(chosen, 2), round(bpm, 2), round(ratio, 3),
                                        bool(abs(np.log(max(ratio, 1e-9))) <= -np.log(1 - OCTAVE_CLOSE)))


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(x)
    cum = np.cumsum(w[o])
    return float(x[o][np.searchsorted(cum, 0.5 * cum[-1])])


def key_segments(chroma: np.ndarray, bass: np.ndarray, hop_s: float, beat_s: float, opts: AnalysisOptions
                 ) -> tuple[list[KeySegment], Evidence]:
    """The track's key from tonal function (`tonality`), or two keys where a split raises the score of both
    halves' own keys over the whole track's key by `key_change_gain` (duration-weighted) and each half lasts
    `min_key_segment_s`."""
    ev = evidence(chroma, bass, hop_s, beat_s, opts.tonal_weights())
    W = len(ev.scores)
    whole, _ = ev.key()
    dur = chroma.shape[1] * hop_s
    seg = int(np.ceil(opts.min_key_segment_s / ev.window_s))
    k0 = key_index(whole.keyscale)
    best: tuple[float, int, KeyEstimate, KeyEstimate] | None = None
    step = max(1, int(round(SPLIT_STEP_S / ev.window_s)))
    for cut in range(seg, W - seg + 1, step) if W >= 2 * seg and seg > 0 else ():
        (a, sa), (b, sb) = ev.key(0, cut), ev.key(cut, W)
        if a.keyscale == b.keyscale:
            continue
        gains = (sa[key_index(a.keyscale)] - sa[k0], sb[key_index(b.keyscale)] - sb[k0])
        gain = (cut * gains[0] + (W - cut) * gains[1]) / W
        if min(gains) >= 0 and (best is None or gain > best[0]):
            best = (gain, cut, a, b)
    if best is None or best[0] < opts.key_change_gain:
        return [KeySegment(0.0, dur, whole)], ev
    _, cut, a, b = best
    at = min(cut * ev.window_s, dur)
    return [KeySegment(0.0, at, a), KeySegment(at, dur, b)], ev


def analyse_track(clips: Sequence[ClipAnalysis], opts: AnalysisOptions = AnalysisOptions(),
                  tempo_range: tuple[float, float] | None = None, given_bpm: float | None = None,
                  given_key: str | None = None) -> TrackAnalysis:
    """Track-level labels for `clips` (in playing order) and each clip's verdict."""
    bpm_audio, source, conf = track_tempo(clips, tempo_range)
    bpm, octave = bpm_audio, None
    if source == "audio":
        bpm, source, octave = choose_tempo_level(clips, bpm_audio, opts.tempo_lo, opts.tempo_hi, opts.tracker_margin)
    if given_bpm is not None:
        bpm, source, conf = float(given_bpm), "sources.json", 1.0
    hop = clips[0].chroma_hop_s
    ev = None
    if given_key is not None:
        tonic, mode = given_key.split()
        given = KeyEstimate(normalise_tonic(tonic), mode.lower(), 1.0, 1.0)
        segments = [KeySegment(0.0, sum(c.chroma.shape[1] * hop for c in clips), given)]
        key_source = "sources.json"
    else:
        segments, ev = key_segments(np.concatenate([c.chroma for c in clips], axis=1),
                                    np.concatenate([c.bass_chroma for c in clips], axis=1), hop, 60.0 / bpm, opts)
        key_source = "audio"
    track_flags = []
    if octave is not None and octave.close and given_bpm is None:
        track_flags.append(octave.flag())
    if given_key is None and segments[0].key.confidence < KEY_CLOSE:
        track_flags.append(f"key close: {segments[0].key.keyscale} (margin {segments[0].key.confidence:.2f})")
    verdicts, t = [], 0.0
    for c in clips:
        n = c.chroma.shape[1]
        mid = t + 0.5 * n * hop
        key = next((s.key for s in segments if s.start_s <= mid < s.end_s), segments[-1].key)
        kconf = 1.0
        if ev is not None:   # how well the clip's own windows support the track's key, 0-1
            w0 = int(t / ev.window_s)
            sc = ev.scores[w0: max(w0 + 1, int((t + n * hop) / ev.window_s))].mean(axis=0)
            kconf = float(np.clip(1 - (sc.max() - sc[key_index(key.keyscale)]) / 0.5, 0, 1))
        t += n * hop
        flags = list(track_flags)
        if c.rhythm_bpm > 0 and not bpm_acc2(c.rhythm_bpm, bpm):
            flags.append(f"tempo {c.rhythm_bpm:.1f} vs track {bpm:.1f}")
        if c.key.confidence >= KEY_FLAG_CONFIDENCE and mirex_key_score(c.key.keyscale, key.keyscale) == 0:
            flags.append(f"key {c.key.keyscale} vs track {key.keyscale}")
        verdicts.append(ClipVerdict(key.keyscale, round(c.beat_strength(bpm), 3), round(kconf, 3), flags))
    return TrackAnalysis(bpm, source, round(conf, 3), bpm_audio, segments, key_source, verdicts, octave)
