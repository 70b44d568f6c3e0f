"""Key profiles (Krumhansl-Kessler, Temperley, or both), pitch names, and issue 14's profile-only estimator.

Stage annotate decides keys by tonal function (`lofi_lora.annotate.tonality`), which uses these profiles as one
of its terms; `key_from_chroma` below is kept as the pitch-content baseline the benchmark compares against.

The time-averaged chroma is correlated with the 24 rotations of a major and a minor profile; the best
correlation names the key. The bass register gets extra weight because in loop-based music the bass
usually sits on the tonic, which separates a key from its relative major/minor, the commonest error.
There is no opening-bar cue: lofi progressions often open on ii or IV, and on held-out material the cue
named the first chord's root instead of the tonic (benchmarks/NOTES.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


PITCHES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")  # sharps, as the synth truth
_ALIASES = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E", "E#": "F", "B#": "C"}

# Profiles start at the tonic. Krumhansl & Kessler 1982 probe-tone ratings; Temperley 2007 (Kostka-Payne
# corpus) relative frequencies.
PROFILES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "krumhansl": (np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
                  np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])),
    "temperley": (np.array([0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400]),
                  np.array([0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330])),
}


@dataclass(frozen=True)
class KeyEstimate:
    tonic: str
    mode: str            # "major" | "minor"
    confidence: float    # margin between the best and the second-best key, scaled to 0-1
    correlation: float

    @property
    def keyscale(self) -> str:
        return f"{self.tonic} {self.mode}"


def normalise_tonic(name: str) -> str:
    """Any spelling (Db, C#, c#) -> the spelling used in PITCHES."""
    n = name.strip()
    n = n[0].upper() + n[1:]
    return _ALIASES.get(n, n)


def pitch_class(name: str) -> int:
    n = normalise_tonic(name)
    if n not in PITCHES:
        raise ValueError(f"unknown pitch name {name!r}")
    return PITCHES.index(n)


def _profile_matrix(profile: str) -> np.ndarray:
    """[24, 12] z-scored templates: rows 0-11 major keys C..B, 12-23 minor keys."""
    names = list(PROFILES) if profile == "combined" else [profile]
    rows = []
    for mode in (0, 1):
        for tonic in range(12):
            t = np.zeros(12)
            for n in names:
                p = PROFILES[n][mode]
                p = (p - p.mean()) / p.std()
                t += np.roll(p, tonic)
            rows.append((t - t.mean()) / t.std())
    return np.stack(rows)


def profile_correlations(chroma: np.ndarray, profile: str = "temperley") -> np.ndarray:
    """[24] correlation of a `[12, T]` chroma's time summary with each key (0-11 major C..B, 12-23 minor)."""
    if profile != "combined" and profile not in PROFILES:
        raise ValueError(f"unknown key profile {profile!r} (one of {', '.join([*PROFILES, 'combined'])})")
    vec = _summarise(chroma)
    if not np.any(vec > 0):
        return np.zeros(24)
    z = (vec - vec.mean()) / (vec.std() + 1e-12)
    return _profile_matrix(profile) @ z / 12.0


def key_index(keyscale: str) -> int:
    """"A minor" -> 21: the row of `profile_correlations`."""
    tonic, mode = keyscale.split()
    return pitch_class(tonic) + (12 if mode.lower() == "minor" else 0)


def key_from_chroma(chroma: np.ndarray, bass_chroma: np.ndarray | None = None, profile: str = "temperley",
                    bass_weight: float = 1.0, candidate_margin: float = 0.25) -> KeyEstimate:
    """Key of a `[12, T]` chroma (and optional bass chroma of the same shape).

    Profile correlation ranks the 24 keys. Keys within `candidate_margin` of the best (typically the
    relative and fifth-related keys, which share most pitches) are then told apart by tonic evidence in the
    bass: how much of the bass sits on each candidate's tonic.
    """
    corr = profile_correlations(chroma, profile)
    if not np.any(corr != 0):
        return KeyEstimate("C", "major", 0.0, 0.0)
    score = corr.copy()
    if bass_chroma is not None and bass_chroma.size and bass_weight > 0:
        tonic_evidence = bass_weight * _summarise(bass_chroma)  # [12] per pitch class
        near = corr >= corr.max() - candidate_margin
        score = np.where(near, corr + np.tile(tonic_evidence, 2), -np.inf)
    order = np.argsort(score)[::-1]
    best, second = int(order[0]), int(order[1])
    margin = float(score[best] - score[second]) if np.isfinite(score[second]) else 0.2
    return KeyEstimate(PITCHES[best % 12], "major" if best < 12 else "minor",
                       float(np.clip(margin / 0.2, 0.0, 1.0)), float(corr[best]))


def _summarise(chroma: np.ndarray) -> np.ndarray:
    """Time summary of a chroma: frames normalised to unit max (so quiet passages count), then averaged."""
    c = np.asarray(chroma, dtype=np.float64)
    energy = c.sum(axis=0)
    keep = energy > energy.max() * 1e-4 if energy.size and energy.max() > 0 else np.zeros_like(energy, bool)
    if not keep.any():
        return np.zeros(12)
    c = np.sqrt(c[:, keep])  # compress: a loud bass note must not drown the harmony
    c = c / (c.max(axis=0, keepdims=True) + 1e-12)
    v = c.mean(axis=1)
    return v / (v.sum() + 1e-12)
