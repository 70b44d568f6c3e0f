"""A tuning set for the tempo level (issue 26): gm_corpus's lofi tracks played straight, with the drums replaced
by syncopated grooves on a sixteenth grid whose hits fall mostly off the beat (3+3+2, tresillo, dembow).

Why: on OpenMSX two drummed pieces of this kind were read at 4/3 of the quarter (the beat tracker locks onto the
dotted-eighth pulse that 3+3+2 accents), and none of the tuning sets (gm's boom-bap, the synth presets) had such
a groove. This set is made here and is for tuning only; its errors say what a rule must handle, not how well it
generalises (benchmarks/NOTES.md reports a held-out set beside it).

Each track is a `gm_corpus.GMTrack` (chords, bass and melody as gm writes them, swing 0.5: sixteenths stay
straight) whose channel-10 part is one of PATTERNS, rendered by `human_corpus.render` through its three
soundfonts in turn (the same low-pass, tape wow and crackle). Truth: the quarter note, 60-100 BPM.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import human_corpus
from gm_corpus import GMTrack, gm_specs, save_events, write_midi as gm_write_midi
from human_corpus import SOUNDFONTS

DRUMS = 9  # MIDI channel 10
KICK, SNARE, RIM, HAT, OPEN_HAT, SHAKER = 36, 38, 37, 42, 46, 70
# Sixteenth steps of a 4/4 bar per instrument; "accent" steps get the loud hat. Most hits sit off the beat.
PATTERNS: dict[str, dict[str, tuple[int, ...]]] = {
    "tresillo": {"kick": (0, 3, 6, 8, 11, 14), "snare": (4, 12), "hat": tuple(range(1, 16, 2)),
                 "accent": (3, 6, 11, 14)},
    "dembow": {"kick": (0, 8), "snare": (3, 6, 11, 14), "hat": tuple(range(1, 16, 2)), "accent": (3, 11)},
    "3-3-3-3-2-2": {"kick": (0, 6, 12), "snare": (3, 9, 14), "hat": (1, 3, 5, 7, 9, 11, 13, 15),
                    "accent": (3, 6, 9, 12)},
    "3+3+2 backbeat": {"kick": (0, 3, 10), "snare": (4, 12), "hat": (2, 3, 5, 6, 8, 10, 11, 13, 14),
                       "accent": (3, 6, 11, 14)},
    "clave 3-2": {"kick": (0, 6, 8), "snare": (3, 10, 12), "hat": tuple(range(1, 16, 2)),
                  "accent": (3, 6, 10, 12)},
}


@dataclass(frozen=True)
class SyncoTrack:
    track_id: str
    base: GMTrack        # chords, bass, melody (gm_corpus), played straight
    pattern: str
    soundfont: str
    seed: int

    @property
    def bpm(self) -> float:
        return self.base.bpm

    def truth(self) -> dict:
        return {**self.base.truth(), "track_id": self.track_id, "pattern": self.pattern, "soundfont": self.soundfont}


def synco_specs(n: int, seconds: float, seed: int) -> list[SyncoTrack]:
    """`n` tracks, 60-100 BPM, patterns and soundfonts in turn; a seed apart from gm's so the music differs."""
    out = []
    for i, t in enumerate(gm_specs(n, seconds, seed + 5000)):
        base = replace(t, track_id=f"synco{i:03d}", swing=0.5)
        out.append(SyncoTrack(base.track_id, base, list(PATTERNS)[i % len(PATTERNS)],
                              SOUNDFONTS[i % len(SOUNDFONTS)].name, t.seed))
    return out


def write_midi(t: SyncoTrack, path: Path) -> float:
    """gm's MIDI of the base track with its channel-10 part replaced by the pattern; returns its length in s."""
    import mido

    gm_write_midi(t.base, path)
    m = mido.MidiFile(path)
    events, now = [], 0
    for msg in m.tracks[1]:
        now += msg.time
        if not (msg.type in ("note_on", "note_off") and msg.channel == DRUMS):
            events.append((now, msg))
    rng = np.random.default_rng(t.seed)
    step = m.ticks_per_beat // 4
    pat = PATTERNS[t.pattern]

    def hit(tick: int, pitch: int, vel: float) -> None:
        events.append((tick, mido.Message("note_on", channel=DRUMS, note=pitch, velocity=int(np.clip(vel, 1, 127)))))
        events.append((tick + step // 2, mido.Message("note_off", channel=DRUMS, note=pitch, velocity=0)))

    for b in range(t.base.bars):
        start = b * 16 * step
        for s in pat["kick"]:
            hit(start + s * step, KICK, 100 + rng.integers(-8, 8))
        for s in pat["snare"]:
            hit(start + s * step, SNARE if rng.random() < 0.8 else RIM, 92 + rng.integers(-8, 8))
        for s in pat["hat"]:
            accent = s in pat["accent"]
            hit(start + s * step, OPEN_HAT if accent and rng.random() < 0.3 else HAT,
                (72 if accent else 48) + rng.integers(-6, 6))
        for s in range(16):   # a few ghost notes and shaker taps anywhere on the grid
            if rng.random() < 0.08:
                hit(start + s * step, SHAKER, 40 + rng.integers(-6, 6))
    del m.tracks[1:]
    save_events(m, events, path)
    return t.base.bars * 4 * 60.0 / t.bpm


def render(t: SyncoTrack, workdir: Path, sr: int = 44100) -> np.ndarray:
    """`[2, frames]` float32 at `sr`, through human_corpus's renderer (soundfont per track, lofi_fx)."""
    return human_corpus.render(t, workdir, sr, write=write_midi)
