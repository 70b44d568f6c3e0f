"""Drummed music written by people, for benchmarks/annotation_accuracy.py: OpenMSX, the MIDI soundtrack of OpenTTD
(Debian package openttd-openmsx 0.4.2, GPL-2.0; 31 pieces by several composers, see its readme.txt), rendered by
FluidSynth through the three soundfonts of human_corpus.

The human sets of human_corpus have no drums; lofi always has them. OpenMSX is jazz, blues, ragtime and pop with
a General MIDI drum kit, arranged by its composers, and nobody here has tuned on it. Used as they stand:
- pieces: one tempo event value (pieces that change tempo are left out), one simple time signature (2/4 to 5/4;
  none means 4/4), and drums on MIDI channel 10. Of 31, 25 qualify.
- tempo: the composers' tempos run 64-200 quarter notes a minute; like human_corpus, each piece is re-timed to a
  seeded 56-104 on the quarter (every event keeps its place in the bar), so the truth is the written beat at a
  lofi tempo. Only the tempo events change.
- key: the file's key signature event where it names exactly one key (8 pieces); a file without one (or with
  two) is scored on tempo only (`keyscale` None). Each piece is transposed by a seeded -5..+6 semitones (drums
  stay), and the key moves with it. Key signature events are what the composer's sequencer wrote: indicative.

Needs mido, fluidsynth, the soundfonts and the openttd-openmsx package (`make bench-annotate` installs them).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import human_corpus
from gm_corpus import NOTE_NAMES
from human_corpus import SOUNDFONTS

ROOT = Path("/usr/share/games/openttd/baseset/openmsx")
DRUMS = 9  # MIDI channel 10


@dataclass(frozen=True)
class MsxPiece:
    track_id: str
    source: str          # file name inside ROOT
    written_bpm: float   # the composer's tempo (quarter notes a minute)
    bpm: float           # the re-timed tempo on the quarter (the truth)
    transpose: int       # semitones (not the drums)
    keyscale: str | None
    soundfont: str
    seed: int
    collection: str = "openmsx"
    root: str = str(ROOT)  # the folder holding `source` (freedoom_corpus: the lumps it took out of the WADs)

    def truth(self) -> dict:
        return {"track_id": self.track_id, "bpm": self.bpm, "keyscale": self.keyscale, "source": self.source,
                "collection": self.collection, "soundfont": self.soundfont, "written_bpm": self.written_bpm}


def _summary(path: Path) -> dict:
    import mido

    m = mido.MidiFile(path)
    tempos, keys, meters, drums = set(), set(), set(), 0
    for track in m.tracks:
        for msg in track:
            if msg.type == "set_tempo":
                tempos.add(msg.tempo)
            elif msg.type == "key_signature":
                keys.add(msg.key)
            elif msg.type == "time_signature":
                meters.add((msg.numerator, msg.denominator))
            elif msg.type == "note_on" and msg.channel == DRUMS and msg.velocity > 0:
                drums += 1
    return {"tempos": tempos, "keys": keys, "meters": meters or {(4, 4)}, "drums": drums, "seconds": m.length}


def _keyscale(key: str, transpose: int) -> str:
    """mido's key name ('Eb', 'C#m') moved by `transpose` semitones, as 'D# major' / 'C# minor'."""
    minor = key.endswith("m")
    root = key[:-1] if minor else key
    flats = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B"}
    tonic = (NOTE_NAMES.index(flats.get(root, root)) + transpose) % 12
    return f"{NOTE_NAMES[tonic]} {'minor' if minor else 'major'}"


def msx_specs(n: int, seed: int, root: Path = ROOT, collection: str = "openmsx", seed_offset: int = 3000,
              min_drums_per_s: float = 0.0, min_seconds: float = 0.0, keys: bool = True) -> list[MsxPiece]:
    """Up to `n` qualifying pieces in sorted file order, each with a seeded tempo, transposition and soundfont.
    freedoom_corpus passes its own folder, a drum-density and length floor, and no keys."""
    import mido

    if not root.is_dir():
        raise SystemExit(f"the openmsx set needs {root} (apt-get install openttd-openmsx; make bench-annotate)")
    rng = np.random.default_rng(seed + seed_offset)
    out: list[MsxPiece] = []
    for f in sorted(root.glob("*.mid")):
        s = _summary(f)
        if len(out) >= n or len(s["tempos"]) > 1 or len(s["meters"]) != 1 or not s["drums"]:
            continue
        if s["drums"] < min_drums_per_s * s["seconds"] or s["seconds"] < min_seconds:
            continue
        if next(iter(s["meters"])) not in ((2, 4), (3, 4), (4, 4), (5, 4)):  # 6/4 and the like: compound
            continue
        written = round(mido.tempo2bpm(next(iter(s["tempos"]), 500000)), 1)
        t, bpm = int(rng.integers(-5, 7)), round(float(rng.uniform(56, 104)), 1)
        key = _keyscale(next(iter(s["keys"])), t) if keys and len(s["keys"]) == 1 else None
        out.append(MsxPiece(f"{collection}{len(out):03d}", f.name, written, bpm, t, key,
                            SOUNDFONTS[len(out) % len(SOUNDFONTS)].name, seed + len(out), collection, str(root)))
    return out


def write_midi(p: MsxPiece, path: Path) -> float:
    """The piece at its re-timed tempo and transposition; returns its length in s."""
    import mido

    m = mido.MidiFile(Path(p.root) / p.source)
    tempo = mido.bpm2tempo(p.bpm)
    for track in m.tracks:
        if not any(msg.type == "set_tempo" for msg in track) and track is m.tracks[0]:
            track.insert(0, mido.MetaMessage("set_tempo", tempo=tempo))
        for i, msg in enumerate(track):
            if msg.type == "set_tempo":
                track[i] = msg.copy(tempo=tempo)
            elif msg.type in ("note_on", "note_off") and msg.channel != DRUMS:
                track[i] = msg.copy(note=int(np.clip(msg.note + p.transpose, 0, 127)))
    m.save(path)
    return float(m.length)


def render(p: MsxPiece, workdir: Path, sr: int = 44100) -> np.ndarray:
    """`[2, frames]` float32 at `sr`: the re-timed piece through human_corpus's renderer."""
    return human_corpus.render(p, workdir, sr, write=write_midi)
