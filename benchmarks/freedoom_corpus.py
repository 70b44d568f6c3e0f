"""Drummed music written by people, held out for the tempo level (issue 26): the soundtrack of Freedoom (Debian
package freedoom 0.12.1, BSD-3-Clause, "Contributors to the Freedoom project", see the package's copyright and
CREDITS; upstream github.com/freedoom/freedoom), rendered like OpenMSX.

Added after the tempo-level rules were fixed on the tuning sets (synth, gm, synco, chorales-A) and run once, so
nobody tuned on it. The music sits in the two IWADs (freedoom1.wad, freedoom2.wad) as MIDI lumps: a WAD is a
12-byte header (magic, lump count, directory offset) and a directory of 16-byte entries (offset, size, 8-byte
name); a lump whose bytes start with b"MThd" is a standard MIDI file. Rock, metal, ambient and electronic pieces by
several composers, most with a General MIDI drum part.

Each distinct lump is written out once (`<wad>_<lump>.mid`) and then goes through openmsx_corpus unchanged:
one tempo, one simple time signature (or none), drums on channel 10, re-timed to a seeded 56-104 quarter notes a
minute, transposed by a seeded -5..+6 semitones, rendered through human_corpus's three soundfonts. On top of
OpenMSX's selection: at least one drum hit per 2 s (a few pieces hold a handful of cymbal hits and no groove) and
at least 30 s of music (jingles). Tempo only: the files' key signature events are a placeholder C major.

Truth needs the file's quarter note to be the music's: eight lumps (freedoom2's D_DM2INT, D_DM2TTL, D_OPENIN,
D_SHAWN, D_SHAWN2, D_THEDA3, D_THE_DA and freedoom1's D_INTRO) were converted from Doom's MUS format, with 89 ticks
per quarter at a nominal 95 BPM: their "quarter" is the converter's clock, about a fifth of their notes fall on its
32nd-note grid (chance), against 0.74-1.00 for every other piece. `on_grid` leaves them out. This filter was added
after the one run of benchmarks/NOTES.md (51 pieces, these eight among its misses); the draw of the remaining 43
(ids, tempi, soundfonts) is the same, so their figures are that run's.

Needs the freedoom package (`make bench-annotate` installs it), mido, fluidsynth and the soundfonts.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

import openmsx_corpus
from openmsx_corpus import MsxPiece, msx_specs

WADS = (Path("/usr/share/games/doom/freedoom1.wad"), Path("/usr/share/games/doom/freedoom2.wad"))


def midi_lumps(wad: Path) -> list[tuple[str, bytes]]:
    """(lump name, bytes) of every MIDI lump of `wad`, in directory order."""
    data = wad.read_bytes()
    magic, count, table = struct.unpack_from("<4sii", data, 0)
    if magic not in (b"IWAD", b"PWAD"):
        raise SystemExit(f"{wad}: not a WAD file (magic {magic!r})")
    out = []
    for i in range(count):
        pos, size, name = struct.unpack_from("<ii8s", data, table + 16 * i)
        lump = data[pos: pos + size]
        if lump[:4] == b"MThd":
            out.append((name.rstrip(b"\0").decode("ascii"), lump))
    return out


def extract(dest: Path) -> Path:
    """Every distinct MIDI lump of the two WADs as a file in `dest` (kept between runs)."""
    missing = [w for w in WADS if not w.is_file()]
    if missing:
        raise SystemExit(f"the freedoom set needs {missing[0]} (apt-get install freedoom; make bench-annotate)")
    dest.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    for wad in WADS:
        for name, lump in midi_lumps(wad):
            if lump in seen:
                continue
            seen.add(lump)
            path = dest / f"{wad.stem}_{name}.mid"
            if not path.is_file():
                tmp = path.with_suffix(".part")
                tmp.write_bytes(lump)
                tmp.replace(path)
    return dest


def on_grid(path: Path) -> float:
    """Share of the file's note onsets within 1/48 of a quarter of a 32nd-note position of its quarter."""
    import mido

    m = mido.MidiFile(path)
    step, tol = m.ticks_per_beat / 8, max(1.0, m.ticks_per_beat / 48)
    onsets = []
    for track in m.tracks:
        now = 0
        for msg in track:
            now += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                onsets.append(now % step)
    d = np.minimum(np.array(onsets), step - np.array(onsets))
    return float(np.mean(d <= tol)) if onsets else 0.0


def freedoom_specs(n: int, seed: int) -> list[MsxPiece]:
    """Up to `n` qualifying pieces (sorted by WAD and lump name), each with a seeded tempo, transposition and
    soundfont, less those whose notes do not sit on their quarter's grid (`on_grid` < 0.5, the MUS conversions:
    filtered after the draw, so the others keep their ids and tempi); the truth is the quarter note, no key."""
    folder = extract(Path(os.environ.get("TMPDIR", "/tmp")) / "lofi-lora-freedoom")
    specs = msx_specs(n, seed, folder, "freedoom", seed_offset=4000, min_drums_per_s=0.5, min_seconds=30.0,
                      keys=False)
    return [p for p in specs if on_grid(folder / p.source) >= 0.5]


render = openmsx_corpus.render
