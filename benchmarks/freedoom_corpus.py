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

Needs the freedoom package (`make bench-annotate` installs it), mido, fluidsynth and the soundfonts.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

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


def freedoom_specs(n: int, seed: int) -> list[MsxPiece]:
    """Up to `n` qualifying pieces (sorted by WAD and lump name), each with a seeded tempo, transposition and
    soundfont; the truth is the quarter note, there is no key."""
    folder = extract(Path(os.environ.get("TMPDIR", "/tmp")) / "lofi-lora-freedoom")
    return msx_specs(n, seed, folder, "freedoom", seed_offset=4000, min_drums_per_s=0.5, min_seconds=30.0,
                     keys=False)


render = openmsx_corpus.render
