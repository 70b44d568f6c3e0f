"""Music written by people, for benchmarks/annotation_accuracy.py: scores from the corpus that ships inside the
music21 wheel (PyPI, BSD; corpus/license.txt: the encodings are public domain or licensed for use, some not
for commercial use), turned into MIDI here and rendered by FluidSynth through three Debian soundfonts.

Sets (each piece keeps its provenance: corpus path, composer or collection, licence note):
  chorales-A / chorales-B  J.S. Bach's four-part chorales (corpus/bach, MusicXML encodings by Margaret Greentree
                           et al.), split by sorted position (even -> A, odd -> B). A is for tuning, B for reporting.
  fiddle                   Ryan's Mammoth Collection (1883; ABC transcriptions by John Chambers,
                           corpus/ryansMammoth): single-line fiddle tunes, jigs, reels and hornpipes. A third source,
                           only reported.

Truth comes from the score, never from an estimator:
- key: the key signature names a major key and its relative minor; the piece's last bass note (chorales) or
  last melody note (fiddle tunes) picks the one whose tonic it is. Pieces whose last note is neither (modal or
  Phrygian endings) are left out. Each piece is then transposed by a seeded interval (-5..+6 semitones), so
  all 24 keys occur; the truth moves with it.
- tempo: these scores carry no metronome mark, so the MIDI gets one (a seeded beat rate, 56-104 beats per
  minute, on the time signature's beat: a quarter in 4/4 or 3/4, a dotted quarter in 6/8); that tempo is the
  truth. No drums are added: the pulse is the composers' own rhythm.

Rendering: one of FluidR3_GM (fluid-soundfont-gm), TimGM6mb (timgm6mb-soundfont) and MuseScore_General_Lite
(musescore-general-soundfont-small) per piece, in turn; GM programs per part from a seeded choice of keys,
strings, winds and organs; then the same lo-fi treatment as gm_corpus (low-pass, tape wow, crackle).

Needs music21 (benchmark only, not a project dependency: `pip install music21==10.5.0`), mido, fluidsynth and the
three soundfont packages (`make bench-annotate` installs them).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gm_corpus import NOTE_NAMES, fluidsynth_stereo, lofi_fx, save_events

SOUNDFONTS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
              Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"))
PART_PROGRAMS = ((0, 4, 19, 48), (4, 5, 11, 0), (40, 41, 42, 43), (73, 71, 68, 70), (19, 20, 16, 0))
FIDDLE_PROGRAMS = (40, 73, 22, 0, 4, 11, 65)
MAX_SECONDS = 120.0


@dataclass(frozen=True)
class HumanPiece:
    track_id: str
    source: str          # corpus path inside music21/corpus
    collection: str
    bpm: float           # beats per minute on the time signature's beat (the truth)
    transpose: int       # semitones
    tonic: int           # after transposition
    mode: str
    soundfont: str
    programs: tuple[int, ...]
    seed: int

    @property
    def keyscale(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"

    def truth(self) -> dict:
        return {"track_id": self.track_id, "bpm": self.bpm, "keyscale": self.keyscale, "source": self.source,
                "collection": self.collection, "soundfont": self.soundfont}


def _corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def _score_key(score, melody_only: bool) -> tuple[int, str] | None:
    """(tonic pitch class, mode) from the key signature and the last (bass or melody) note, or None."""
    from music21 import key

    sigs = list(score.recurse().getElementsByClass(key.KeySignature))
    if not sigs:
        return None
    ks = sigs[0]
    major, minor = ks.asKey("major").tonic.pitchClass, ks.asKey("minor").tonic.pitchClass
    parts = [score] if melody_only else list(score.parts)
    last = []
    for p in parts:
        notes = list(p.flatten().notes)
        if notes:
            last.append(min(notes[-1].pitches, key=lambda x: x.ps))
    if not last:
        return None
    final = min(last, key=lambda x: x.ps).pitchClass
    if final == major:
        return major, "major"
    if final == minor:
        return minor, "minor"
    return None


def _beat_quarters(score) -> float:
    from music21 import meter

    ts = list(score.recurse().getElementsByClass(meter.TimeSignature))
    return float(ts[0].beatDuration.quarterLength) if ts else 1.0


def human_specs(collection: str, n: int, seed: int) -> list[HumanPiece]:
    """`n` pieces of `chorales-A`, `chorales-B` or `fiddle` with a truth key, in sorted corpus order."""
    from music21 import converter

    root = _corpus_root()
    if collection.startswith("chorales"):
        files = sorted(root.glob("bach/bwv*.mxl"))
        files = files[0::2] if collection.endswith("A") else files[1::2]
        melody_only = False
    elif collection == "fiddle":
        files = sorted(root.glob("ryansMammoth/*.abc"))
        melody_only = True
    else:
        raise ValueError(f"unknown human set {collection!r}")
    rng = np.random.default_rng(seed + {"chorales-A": 0, "chorales-B": 1000, "fiddle": 2000}[collection])
    out: list[HumanPiece] = []
    for f in files:
        if len(out) >= n:
            break
        try:
            score = converter.parse(f)
        except Exception:  # noqa: BLE001 - a few corpus encodings do not parse; they are simply not used
            continue
        truth = _score_key(score, melody_only)
        if truth is None or (not melody_only and len(score.parts) < 3):
            continue
        t = int(rng.integers(-5, 7))
        bpm = round(float(rng.uniform(56, 104)), 1)
        nparts = 1 if melody_only else len(score.parts)
        progs = (int(rng.choice(FIDDLE_PROGRAMS)),) if melody_only else \
            tuple(int(p) for p in PART_PROGRAMS[int(rng.integers(len(PART_PROGRAMS)))][:nparts])
        sf = SOUNDFONTS[len(out) % len(SOUNDFONTS)]
        out.append(HumanPiece(f"{collection}{len(out):03d}", str(f.relative_to(root)), collection, bpm, t,
                              (truth[0] + t) % 12, truth[1], sf.name, progs, seed + len(out)))
    return out


def write_midi(p: HumanPiece, path: Path) -> float:
    """The score's notes (all parts, repeats not expanded) at the piece's tempo; returns its length in s."""
    import mido
    from music21 import converter

    score = converter.parse(_corpus_root() / p.source)
    quarter_bpm = p.bpm * _beat_quarters(score)
    tpb = 480
    mid = mido.MidiFile(ticks_per_beat=tpb)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(quarter_bpm)))
    mid.tracks.append(meta)
    rng = np.random.default_rng(p.seed)
    parts = list(score.parts) if len(p.programs) > 1 else [score]
    ev: list[tuple[int, object]] = []
    end = 0
    for ch, (part, prog) in enumerate(zip(parts, p.programs)):
        ev.append((0, mido.Message("program_change", channel=ch, program=prog)))
        for n in part.flatten().notes:
            s = int(round(float(n.offset) * tpb))
            d = max(int(round(float(n.quarterLength) * tpb)) - 20, 30)
            for pitch in n.pitches:
                key = int(pitch.midi) + p.transpose
                vel = int(np.clip(72 + rng.integers(-8, 8) - 6 * ch, 30, 110))
                ev.append((s, mido.Message("note_on", channel=ch, note=key, velocity=vel)))
                ev.append((s + d, mido.Message("note_off", channel=ch, note=key, velocity=0)))
            end = max(end, s + d)
    save_events(mid, ev, path)
    return end / tpb * 60.0 / quarter_bpm


def render(p, workdir: Path, sr: int = 44100, write=None) -> np.ndarray:
    """`[2, frames]` float32 at `sr` (at most MAX_SECONDS): the piece's MIDI (`write(p, path)` -> seconds, default
    this module's `write_midi`) through FluidSynth and its soundfont, then `lofi_fx`. `p` needs `track_id`,
    `soundfont` and `seed` (openmsx_corpus renders its pieces through here too)."""
    exe = shutil.which("fluidsynth")
    sf = next((s for s in SOUNDFONTS if s.name == p.soundfont), None)
    if exe is None or sf is None or not sf.is_file():
        raise SystemExit("the human sets need fluidsynth and the soundfont packages (make bench-annotate)")
    mid = workdir / f"{p.track_id}.mid"
    seconds = (write or write_midi)(p, mid)
    y, got = fluidsynth_stereo(exe, sf, mid, sr, gain=0.6)
    y = y[:, : int(min(seconds + 1.0, MAX_SECONDS) * got)]
    return lofi_fx(y, got, p.seed)
