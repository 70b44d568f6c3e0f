"""Drummed accompaniment written by people, held out for the tempo level (issue 26, fifth pass): the groove library
of MMA, Musical MIDI Accompaniment (Debian package mma 21.09, GPL-2.0; Bob van der Poel and the library's other
authors, named in each groove file's `Author` line; upstream www.mellowood.ca/mma), rendered like OpenMSX.

Added after the tempo code was fixed (the 4/3 rule of the fourth pass) and run once, so nobody tuned on it. Each file of the standard library
(/usr/share/mma/lib/stdlib, 118 with a groove) defines a style's drum, bass and chord patterns with explicit `Time`
and `Timesig` lines, written by hand for a named style (rhumba, swing, bossa nova, rock, waltz, ...). Its first
`DefGroove` (the style's main groove, not a fill, intro or ending) plays a fixed 24-bar chord chart (written here:
only its harmony is ours, every note's rhythm is the groove author's), compiled by the `mma` command to MIDI with
drums on channel 10. The compiled files then go through openmsx_corpus unchanged: one tempo, one simple time
signature (2/4-5/4; compound 6/8 and 12/8 grooves are left out), drums, at least one drum hit per 2 s and 30 s of
music, re-timed to a seeded 56-104 quarter notes a minute, transposed by a seeded -5..+6 semitones, rendered
through human_corpus's three soundfonts. Truth: the compiled file's quarter note. Tempo only (the chart is ours).

Needs the mma package (`make bench-annotate` installs it), mido, fluidsynth and the soundfonts.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import openmsx_corpus
from openmsx_corpus import MsxPiece, msx_specs

LIB = Path("/usr/share/mma/lib/stdlib")
CHART = ("C", "Am", "F", "G", "C", "Am", "Dm", "G", "Em", "Am", "F", "G", "C", "F", "G", "C",
         "Am", "Em", "F", "C", "Dm", "G", "C", "C")


def main_grooves(lib: Path = LIB) -> list[tuple[str, str]]:
    """(library file stem, its first DefGroove) for every groove file of `lib`, sorted by file name."""
    out = []
    for f in sorted(lib.glob("*.mma")):
        m = re.search(r"^\s*DefGroove\s+(\S+)", f.read_text(errors="replace"), re.IGNORECASE | re.MULTILINE)
        if m:
            out.append((f.stem, m.group(1)))
    return out


def song(groove: str, source: str) -> str:
    """An MMA song: the groove at a nominal 100 BPM over CHART, one chord per bar."""
    bars = "\n".join(f"{i + 1} {c}" for i, c in enumerate(CHART))
    return f"// {groove} from the MMA standard library ({source}.mma) over a fixed chart\nTempo 100\nGroove {groove}\n{bars}\n"


def compile_songs(dest: Path) -> Path:
    """Every main groove compiled to `dest/<file>_<groove>.mid` (kept between runs); no shell, argv lists only. A
    groove the command rejects on its own (none.mma's `None`, an empty groove) is left out."""
    exe = shutil.which("mma")
    if exe is None or not LIB.is_dir():
        raise SystemExit(f"the mma set needs the mma command and {LIB} (apt-get install mma; make bench-annotate)")
    dest.mkdir(parents=True, exist_ok=True)
    for stem, groove in main_grooves():
        out = dest / f"{stem}_{groove}.mid"
        if out.is_file():
            continue
        src = dest / f"{stem}_{groove}.mma"
        src.write_text(song(groove, stem))
        tmp = dest / f"{stem}_{groove}.part.mid"
        done = subprocess.run([exe, str(src), "-f", str(tmp)], capture_output=True, timeout=120, cwd=dest)
        if done.returncode == 0 and tmp.is_file():
            tmp.replace(out)
    return dest


def mma_specs(n: int, seed: int) -> list[MsxPiece]:
    """Up to `n` qualifying grooves (sorted by file name), each with a seeded tempo, transposition and soundfont;
    the truth is the quarter note, no key."""
    folder = compile_songs(Path(os.environ.get("TMPDIR", "/tmp")) / "lofi-lora-mma")
    return msx_specs(n, seed, folder, "mma", seed_offset=6000, min_drums_per_s=0.5, min_seconds=30.0, keys=False)


render = openmsx_corpus.render
