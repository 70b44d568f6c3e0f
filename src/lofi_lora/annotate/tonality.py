"""Key from tonal function: which chords the music uses, how they move and what the bass stands on.

A pitch-class profile cannot tell a minor key from its relative major (same notes), and barely a key from its
dominant (one note apart). Function can: in A minor the A-minor chord is the most used and the most returned to,
E major (V, with G#) leads to it and the bass sits on A; in C major it is C that plays that role. So the chroma
is cut into beat-long windows, each window gets a soft chord label (major and minor triads, maj7, min7 and dom7
chords on every root, as templates that carry each tone's partials; a seventh chord counts as its triad; the bass
note favours the chord it is the root of), and every one of the 24 keys scores each window by

- `chord`: log-probability of that chord in the key (a table of diatonic functions per mode, below),
- `cadence`: a dominant chord (major triad on the fifth) resolving to the key's tonic chord, V-i vs V-I,
- `bass`: the bass note on the key's tonic (and, half as much, on its dominant),
- `profile`: the window's chroma against the key profile (the pitch-content evidence used before),
- `final`: the track's last chord being the tonic chord (a piece or a phrase resolves there).

Every term is a per-window sum, so a track's score and the score of any split of it (a modulation) come from
cumulative sums: all clips of a track are one decision, and a key change is tested on the same evidence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lofi_lora.annotate.key import PITCHES, KeyEstimate, _profile_matrix

# Probability of a chord, by its root above the tonic, in a major key [maj triad, min triad] and a minor key.
# Rough frequencies of diatonic functions in tonal and popular music (Temperley 2001, de Clercq & Temperley
# 2011 rock corpus); borrowed chords (bVII, iv in major; v, VII in minor) get small shares, the rest a floor.
_MAJOR = {(0, "M"): .30, (5, "M"): .15, (7, "M"): .17, (9, "m"): .09, (2, "m"): .09, (4, "m"): .05,
          (10, "M"): .03, (5, "m"): .02, (8, "M"): .015, (2, "M"): .02, (4, "M"): .015}
_MINOR = {(0, "m"): .30, (5, "m"): .12, (7, "M"): .12, (7, "m"): .05, (8, "M"): .10, (3, "M"): .08,
          (10, "M"): .08, (5, "M"): .03, (2, "m"): .02, (0, "M"): .015}
_FLOOR = 0.004


def _chord_log_table() -> np.ndarray:
    """[24 keys, 24 chords] log P(chord | key); keys and chords both 0-11 major, 12-23 minor by root."""
    out = np.full((24, 24), np.log(_FLOOR))
    for mode, table in ((0, _MAJOR), (1, _MINOR)):
        for tonic in range(12):
            for (deg, q), p in table.items():
                out[mode * 12 + tonic, (tonic + deg) % 12 + (12 if q == "m" else 0)] = np.log(p)
    return out - out.mean(axis=1, keepdims=True)


_LOG_P = _chord_log_table()


HARMONIC_DECAY = 0.6   # amplitude of the h-th partial ~ HARMONIC_DECAY ** (h - 1)


# Chord shapes -> the triad class (0 major, 1 minor) whose function they carry: a seventh chord is heard as its
# triad (Cmaj7 is I, not an E-minor chord; G7 is V), so loops of seventh chords keep their roots.
SHAPES = (((0, 4, 7), 0), ((0, 3, 7), 1), ((0, 4, 7, 11), 0), ((0, 3, 7, 10), 1), ((0, 4, 7, 10), 0))


def _templates(decay: float = HARMONIC_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """[60, 12] unit-norm chord templates (every shape on every root) with each tone's first six partials
    folded into pitch classes, and [60] the 24-class chord (0-11 major, 12-23 minor) each one stands for.
    The third partial of a tone lands a fifth above it: a plain triad template mistakes a held C chord for G."""
    t, cls = [], []
    for tones, quality in SHAPES:
        for r in range(12):
            row = np.zeros(12)
            for tone in tones:
                for h in range(1, 7):
                    row[(r + tone + int(round(12 * np.log2(h)))) % 12] += decay ** (h - 1)
            t.append(row / np.linalg.norm(row))
            cls.append(r + 12 * quality)
    return np.stack(t), np.array(cls)


_TEMPLATES, _CLASS = _templates()
_TO_CLASS = np.eye(24)[_CLASS]          # [60, 24]
_ROOT = _CLASS % 12
ACTIVE_LEVEL = 0.1     # windows quieter than this share of the median window are rests, tails or noise


@dataclass(frozen=True)
class TonalWeights:
    """Weights of the evidence terms, chosen on the tuning sets only (synth, gm, chorales-A: benchmarks/NOTES.md)."""
    chord: float = 0.5
    cadence: float = 1.0
    bass: float = 1.0
    profile: float = 4.0
    final: float = 0.25
    sharpness: float = 20.0     # softmax temperature of the chord labels (cosine units)
    profile_name: str = "temperley"


@dataclass(frozen=True)
class Evidence:
    """Per-window key scores [W, 24] and the window length, from which any stretch's key is read."""
    scores: np.ndarray
    window_s: float
    final: np.ndarray            # [24] bonus of the track's last chord, added to the stretch that ends the track

    def key(self, start: int = 0, stop: int | None = None) -> tuple[KeyEstimate, np.ndarray]:
        """Key of windows [start, stop) and its [24] mean score vector."""
        stop = len(self.scores) if stop is None else stop
        if stop <= start:
            return KeyEstimate("C", "major", 0.0, 0.0), np.zeros(24)
        s = self.scores[start:stop].mean(axis=0)
        if stop == len(self.scores):
            s = s + self.final
        return _estimate(s), s


def _estimate(score: np.ndarray) -> KeyEstimate:
    order = np.argsort(score)[::-1]
    best, second = int(order[0]), int(order[1])
    margin = float(score[best] - score[second])
    return KeyEstimate(PITCHES[best % 12], "major" if best < 12 else "minor", float(np.clip(margin / 0.5, 0, 1)),
                       float(score[best]))


def _windows(x: np.ndarray, n: int) -> np.ndarray:
    """[12, T] -> [W, 12] sums over consecutive windows of `n` frames (a partial last window kept)."""
    W = int(np.ceil(x.shape[1] / n))
    pad = np.zeros((12, W * n - x.shape[1]), dtype=x.dtype)
    return np.concatenate([x, pad], axis=1).reshape(12, W, n).sum(axis=2).T


def evidence(chroma: np.ndarray, bass: np.ndarray, hop_s: float, beat_s: float,
             weights: TonalWeights = TonalWeights()) -> Evidence:
    """Per-window key evidence of a `[12, T]` chroma and bass chroma; windows are one beat long."""
    n = max(1, int(round(beat_s / hop_s)))
    c = np.sqrt(np.maximum(np.asarray(chroma, np.float64), 0))
    c = c / (c.max(axis=0, keepdims=True) + 1e-12)          # each frame to unit max: quiet passages count
    cw = _windows(c, n)                                       # [W, 12]
    bw = _windows(np.asarray(bass, np.float64), n)
    level = _windows(np.asarray(chroma, np.float64), n).sum(axis=1)
    active = level > ACTIVE_LEVEL * (np.median(level[level > 0]) if np.any(level > 0) else np.inf)
    cn = cw / (np.linalg.norm(cw, axis=1, keepdims=True) + 1e-12)
    bn = bw / (bw.sum(axis=1, keepdims=True) + 1e-12)        # bass pitch-class shares per window
    fit = cn @ _TEMPLATES.T + 0.3 * bn[:, _ROOT]              # [W, 60]: the bass note favours its own root
    post = np.exp(weights.sharpness * (fit - fit.max(axis=1, keepdims=True)))
    post = (post / post.sum(axis=1, keepdims=True)) @ _TO_CLASS   # [W, 24] chord classes
    post[~active] = 0
    chord = post @ _LOG_P.T                                   # [W, 24] expected log P(chord | key)
    # V -> I: a major chord on the key's fifth in one window, the key's tonic chord (chord class k for key k,
    # both 0-11 major and 12-23 minor) in the next.
    dom = np.roll(post[:, :12], -7, axis=1)                   # [W, 12] P(major chord on tonic + 7) per tonic
    cad = np.zeros_like(chord)
    cad[1:] = np.tile(dom[:-1], 2) * post[1:]
    bass_k = np.tile(bn + 0.5 * np.roll(bn, -7, axis=1), 2)  # tonic, and half for the dominant, in the bass
    prof = cn @ _profile_matrix(weights.profile_name).T / np.sqrt(12)  # [W, 24] window chroma vs key profile
    scores = (weights.chord * chord + weights.cadence * 4.0 * cad + weights.bass * bass_k
              + weights.profile * prof) * active[:, None]
    final = np.zeros(24)
    idx = np.nonzero(active)[0]
    if idx.size:   # the last sounding chord: the key's tonic triad, in a minor key also with a Picardy third
        last = post[idx[-1]]
        final = weights.final * np.concatenate([last[:12], last[12:] + last[:12]])
    # Means over active windows only: silence must not dilute a stretch's evidence.
    scale = len(scores) / max(int(active.sum()), 1)
    return Evidence(scores * scale, n * hop_s, final)
