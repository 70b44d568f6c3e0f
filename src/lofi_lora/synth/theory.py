"""Keys, diatonic 7th/9th chords, progressions and voice leading: the harmony must really be in the key."""
from __future__ import annotations

from dataclasses import dataclass

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # natural minor

# Progressions as (scale degree 0..6, bars, dominant?) ; "dominant" raises the third of v in minor (V7).
PROGRESSIONS: dict[str, tuple[tuple[int, int, bool], ...]] = {
    "I-vi-ii-V": ((0, 1, False), (5, 1, False), (1, 1, False), (4, 1, False)),
    "ii-V-I": ((1, 1, False), (4, 1, False), (0, 2, False)),
    "I-IV": ((0, 1, False), (3, 1, False)),
    "I-iii-vi-IV": ((0, 1, False), (2, 1, False), (5, 1, False), (3, 1, False)),
    "I-IV-iii-vi": ((0, 1, False), (3, 1, False), (2, 1, False), (5, 1, False)),
    "I-vi-IV-V": ((0, 1, False), (5, 1, False), (3, 1, False), (4, 1, False)),
    "Imaj-long": ((0, 2, False), (3, 2, False)),
    "i-VI-III-VII": ((0, 1, False), (5, 1, False), (2, 1, False), (6, 1, False)),
    "i-iv": ((0, 1, False), (3, 1, False)),
    "i-iv-VII-III": ((0, 1, False), (3, 1, False), (6, 1, False), (2, 1, False)),
    "i-VI-iv-v": ((0, 1, False), (5, 1, False), (3, 1, False), (4, 1, False)),
    "ii-V-i": ((1, 1, False), (4, 1, True), (0, 2, False)),
    "i-long": ((0, 2, False), (5, 2, False)),
}


@dataclass(frozen=True)
class Chord:
    """A diatonic chord: root pitch class, chord tones as semitones above the root (root, 3rd, 5th, 7th[, 9th])."""

    root_pc: int
    intervals: tuple[int, ...]
    degree: int

    @property
    def pcs(self) -> tuple[int, ...]:
        return tuple((self.root_pc + i) % 12 for i in self.intervals)


def tonic_pc(tonic: str) -> int:
    if tonic not in NOTE_NAMES:
        raise ValueError(f"tonic {tonic!r} is not one of {NOTE_NAMES} (sharps only)")
    return NOTE_NAMES.index(tonic)


def scale_pcs(tonic: str, mode: str) -> tuple[int, ...]:
    root = tonic_pc(tonic)
    return tuple((root + s) % 12 for s in SCALES[mode])


def diatonic_chord(tonic: str, mode: str, degree: int, ninth: bool, dominant: bool = False) -> Chord:
    """Stack thirds on `degree` of the scale; add the 9th only where it is a major 9th (no b9 clashes)."""
    scale = SCALES[mode]
    steps = [scale[(degree + 2 * k) % 7] + 12 * ((degree + 2 * k) // 7) for k in range(5)]
    ivs = [s - steps[0] for s in steps]
    if dominant and mode == "minor" and degree == 4:
        ivs[1] = 4  # harmonic-minor V7: the leading tone resolves to the tonic
    chord = ivs[:4] + ([ivs[4]] if ninth and ivs[4] % 12 == 2 else [])
    return Chord((tonic_pc(tonic) + scale[degree]) % 12, tuple(chord), degree)


def progression_bars(tonic: str, mode: str, name: str, ninths: bool) -> list[Chord]:
    """One chord per bar for one pass of the progression."""
    bars: list[Chord] = []
    for degree, n_bars, dom in PROGRESSIONS[name]:
        bars += [diatonic_chord(tonic, mode, degree, ninths, dom)] * n_bars
    return bars


def voicing_pcs(chord: Chord) -> list[int]:
    """Rootless 3-5-7-9 when the 9th exists (the bass has the root), else 3-5-7 plus the root on top."""
    ivs = chord.intervals
    picked = ivs[1:5] if len(ivs) == 5 else (ivs[1], ivs[2], ivs[3], 12)
    return [(chord.root_pc + i) % 12 for i in picked]


def _stack(pcs: list[int], lowest: int) -> list[int]:
    notes, prev = [], lowest - 1
    for pc in pcs:
        n = prev + 1 + (pc - (prev + 1)) % 12
        notes.append(n)
        prev = n
    return notes


def voice_lead(pcs: list[int], prev: list[int] | None, low: int = 50, high: int = 79,
               center: float = 62.0) -> list[int]:
    """Pick the inversion and octave of `pcs` that moves least from `prev` (sum of semitones), within range."""
    best, best_cost = None, float("inf")
    for r in range(len(pcs)):
        order = pcs[r:] + pcs[:r]
        for lowest in range(low, low + 12):
            if lowest % 12 != order[0]:
                continue
            notes = _stack(order, lowest)
            if notes[-1] > high:
                continue
            mean = sum(notes) / len(notes)
            cost = 0.3 * abs(mean - center)
            if prev is not None:
                cost += sum(abs(a - b) for a, b in zip(sorted(notes), sorted(prev)))
            if cost < best_cost:
                best, best_cost = notes, cost
    assert best is not None
    return best


def bass_root(pc: int, low: int = 33) -> int:
    """Root in the bass octave: A1 (33) up to G#2 (44)."""
    return low + (pc - low) % 12


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)
