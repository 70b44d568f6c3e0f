"""A held-out lofi test set for benchmarks/annotation_accuracy.py: MIDI written here, rendered by FluidSynth
through a General MIDI soundfont, then low-passed, wobbled and given vinyl noise.

It shares nothing with `lofi_lora.synth`: other instruments (sampled electric pianos, guitars, vibes, upright
and electric bass, GM drums), swung eighths, 60-100 BPM, and chord progressions typical of lofi, most of which
do not open on the tonic (ii-V-I-vi, IV-iii-ii-I, vi-IV-I-V, i-VI-III-VII, borrowed and modal chords). A few
tracks modulate halfway (`key2`), so key-change detection is measured too.

Needs `apt-get install -y fluidsynth fluid-soundfont-gm` and `pip install mido==1.3.3` (`make bench-annotate`).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# (root in semitones above the tonic, chord quality) per bar; the first chord is rarely the tonic.
PROGRESSIONS: dict[str, tuple[str, list[tuple[int, str]]]] = {
    "ii-V-I-vi": ("major", [(2, "min9"), (7, "dom9"), (0, "maj9"), (9, "min7")]),
    "IV-iii-ii-I": ("major", [(5, "maj7"), (4, "min7"), (2, "min7"), (0, "maj7")]),
    "vi-IV-I-V": ("major", [(9, "min7"), (5, "maj7"), (0, "maj7"), (7, "dom7")]),
    "IV-V-iii-vi-ii-V-I-I": ("major", [(5, "maj7"), (7, "dom7"), (4, "min7"), (9, "min7"), (2, "min7"), (7, "dom7"),
                                       (0, "maj9"), (0, "maj9")]),
    "I-iv-bVII-I (borrowed)": ("major", [(0, "maj7"), (5, "min7"), (10, "dom9"), (0, "maj7")]),
    "I-vi-ii-V": ("major", [(0, "maj7"), (9, "min7"), (2, "min7"), (7, "dom7")]),
    "i-VI-III-VII": ("minor", [(0, "min7"), (8, "maj7"), (3, "maj7"), (10, "dom7")]),
    "iv-v-i-i": ("minor", [(5, "min7"), (7, "min7"), (0, "min9"), (0, "min9")]),
    "VI-VII-i-i": ("minor", [(8, "maj7"), (10, "dom7"), (0, "min7"), (0, "min7")]),
    "ii0-V-i-i": ("minor", [(2, "m7b5"), (7, "dom7b9"), (0, "min9"), (0, "min9")]),
    "i-iv (dorian IV)": ("minor", [(0, "min9"), (5, "dom9"), (0, "min9"), (5, "dom9")]),
    "VI-iv-i-V": ("minor", [(8, "maj7"), (5, "min7"), (0, "min7"), (7, "dom7")]),
}
CHORDS = {"maj7": (0, 4, 7, 11), "maj9": (0, 4, 11, 14), "min7": (0, 3, 7, 10), "min9": (0, 3, 10, 14),
          "dom7": (0, 4, 7, 10), "dom9": (0, 4, 10, 14), "dom7b9": (0, 4, 10, 13), "m7b5": (0, 3, 6, 10)}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
KEYS_PROGRAMS = (4, 5, 0, 11, 26, 24, 12, 88)   # Rhodes, DX EP, piano, vibes, jazz gtr, nylon gtr, marimba, pad
BASS_PROGRAMS = (32, 33, 34)                    # upright, fingered, picked
LEAD_PROGRAMS = (73, 11, 65, 4, 79)             # flute, vibes, alto sax, EP, ocarina


@dataclass(frozen=True)
class GMTrack:
    track_id: str
    bpm: float
    tonic: int
    progression: str
    swing: float                  # offbeat eighth position within the beat: 0.5 straight, 0.667 triplet swing
    seconds: float
    seed: int
    key2: int | None = None       # tonic after a modulation halfway through (same mode), else None
    programs: tuple[int, int, int] = field(default=(4, 32, 73))

    @property
    def mode(self) -> str:
        return PROGRESSIONS[self.progression][0]

    @property
    def keyscale(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"

    @property
    def bars(self) -> int:
        return max(4, int(round(self.seconds / (4 * 60.0 / self.bpm))))

    @property
    def change_s(self) -> float | None:
        return None if self.key2 is None else (self.bars // 2) * 4 * 60.0 / self.bpm

    def truth(self) -> dict:
        out = {"track_id": self.track_id, "bpm": self.bpm, "keyscale": self.keyscale, "progression": self.progression,
               "swing": self.swing, "tonic": NOTE_NAMES[self.tonic], "mode": self.mode}
        if self.key2 is not None:
            out.update(keyscale2=f"{NOTE_NAMES[self.key2]} {self.mode}", change_s=self.change_s)
        return out


def gm_specs(n: int, seconds: float, seed: int, modulating: int = 0) -> list[GMTrack]:
    """`n` tracks over all 24 keys and every progression, 60-100 BPM, swing 0.5-0.68; the last `modulating`
    ones change key halfway (up a tone, a minor third or a fourth)."""
    rng = np.random.default_rng(seed)
    names = list(PROGRESSIONS)
    majors = [p for p in names if PROGRESSIONS[p][0] == "major"]
    minors = [p for p in names if PROGRESSIONS[p][0] == "minor"]
    out = []
    for i in range(n):
        pool = majors if i % 2 == 0 else minors
        prog = pool[(i // 2) % len(pool)]
        key2 = None
        if i >= n - modulating:
            key2 = ((i * 7) % 12 + int(rng.choice([2, 3, 5]))) % 12
        out.append(GMTrack(f"gm{i:03d}", round(float(rng.uniform(60, 100)), 1), (i * 7) % 12, prog,
                           round(float(rng.choice([0.5, 0.6, 0.64, 0.667])), 3), seconds, seed + i, key2,
                           (int(rng.choice(KEYS_PROGRAMS)), int(rng.choice(BASS_PROGRAMS)),
                            int(rng.choice(LEAD_PROGRAMS)))))
    return out


def write_midi(t: GMTrack, path: Path) -> None:
    """Chords (voiced in the middle register), a bass on roots and fifths, a sparse melody, and a swung
    boom-bap kit with ghost notes, in 4/4."""
    import mido

    rng = np.random.default_rng(t.seed)
    tpb = 480
    mid = mido.MidiFile(ticks_per_beat=tpb)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(t.bpm)))
    mid.tracks.append(meta)
    ev: list[tuple[int, mido.Message]] = []

    def note(ch: int, pitch: int, start: float, dur: float, vel: int) -> None:
        s = int(start)
        ev.append((s, mido.Message("note_on", channel=ch, note=int(pitch), velocity=int(np.clip(vel, 1, 127)))))
        ev.append((s + max(int(dur), 10), mido.Message("note_off", channel=ch, note=int(pitch), velocity=0)))

    for ch, prog in enumerate(t.programs):
        ev.append((0, mido.Message("program_change", channel=ch, program=prog)))
    mode, chords = PROGRESSIONS[t.progression]
    scale = SCALES[mode]
    bar = 4 * tpb
    swing = lambda beat, half: (beat + (t.swing if half else 0.0)) * tpb  # noqa: E731
    for b in range(t.bars):
        tonic = t.key2 if (t.key2 is not None and b >= t.bars // 2) else t.tonic
        root_iv, quality = chords[b % len(chords)]
        root = 48 + (tonic + root_iv) % 12
        voicing = [root + iv for iv in CHORDS[quality]]
        voicing = [p - 12 if p > 67 else p for p in voicing]
        start = b * bar
        for k, p in enumerate(sorted(voicing)):   # a slight strum
            note(0, p, start + 12 * k, bar - 60, 58 + rng.integers(-6, 6))
        bass = 33 + (tonic + root_iv - 9) % 12
        note(1, bass, start, 1.4 * tpb, 92)
        note(1, bass + (7 if rng.random() < 0.5 else 12), swing(2, True), 0.9 * tpb, 78)
        note(1, bass, swing(3, False) + start, 0.8 * tpb, 84)
        chord_pcs = [(tonic + root_iv + iv) % 12 for iv in CHORDS[quality]]
        for beat in range(4):
            for half in (False, True):
                if rng.random() < (0.35 if half else 0.55):
                    pcs = chord_pcs if rng.random() < 0.6 else [(tonic + s) % 12 for s in scale]
                    pitch = 72 + int(rng.choice(pcs))
                    note(2, pitch, start + swing(beat, half), 0.45 * tpb, 64 + rng.integers(-8, 8))
        for beat in range(4):                                   # GM drums on channel 10 (index 9)
            t0 = start + beat * tpb
            if beat in (0, 2) or (beat == 1 and rng.random() < 0.25):
                note(9, 36, t0, tpb / 4, 100)
            if beat == 2 and rng.random() < 0.4:
                note(9, 36, start + swing(2, True), tpb / 4, 80)
            if beat in (1, 3):
                note(9, 38 if rng.random() < 0.8 else 40, t0, tpb / 4, 92)
            note(9, 42, t0, tpb / 8, 62)
            note(9, 42 if rng.random() < 0.85 else 46, start + swing(beat, True), tpb / 8, 44)
    save_events(mid, ev, path)


def save_events(mid, ev: list, path: Path) -> None:
    """Absolute-tick (tick, message) events as one track of `mid`, note-offs before note-ons at a tick, saved."""
    import mido

    track = mido.MidiTrack()
    ev.sort(key=lambda e: (e[0], e[1].type == "note_on"))
    now = 0
    for when, msg in ev:
        track.append(msg.copy(time=when - now))
        now = when
    mid.tracks.append(track)
    mid.save(path)


def lofi_fx(y: np.ndarray, sr: int, seed: int) -> np.ndarray:
    """Low-pass (2.5-6 kHz), tape wow (0.4-0.9 Hz, +-0.3 %), vinyl crackle and hiss on `[channels, frames]`."""
    from scipy.signal import butter, sosfilt

    rng = np.random.default_rng(seed)
    sos = butter(2, float(rng.uniform(2500, 6000)), btype="low", fs=sr, output="sos")
    y = sosfilt(sos, y, axis=-1)
    n = y.shape[-1]
    t = np.arange(n) / sr
    rate = float(rng.uniform(0.4, 0.9))
    pos = t + 0.003 / (2 * np.pi * rate) * np.sin(2 * np.pi * rate * t)   # +-0.3 % pitch/tempo wobble
    y = np.stack([np.interp(pos * sr, np.arange(n), ch) for ch in y])
    noise = rng.standard_normal(n) * 0.002
    clicks = np.zeros(n)
    where = rng.integers(0, n, size=int(n / sr * 6))
    clicks[where] = rng.standard_normal(where.size) * 0.08
    y = y + noise + np.convolve(clicks, np.exp(-np.arange(40) / 6.0), mode="same")
    return (0.5 * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


def render(t: GMTrack, workdir: Path, sr: int = 44100) -> np.ndarray:
    """`[2, frames]` float32 at `sr`: the track's MIDI through FluidSynth, then `lofi_fx`."""
    exe = shutil.which("fluidsynth")
    if exe is None or not SOUNDFONT.is_file():
        raise SystemExit("the GM set needs `apt-get install -y fluidsynth fluid-soundfont-gm` (make bench-annotate)")
    mid = workdir / f"{t.track_id}.mid"
    write_midi(t, mid)
    y, got = fluidsynth_stereo(exe, SOUNDFONT, mid, sr, gain=0.5)
    y = y[:, : int(t.bars * 4 * 60.0 / t.bpm * got)]   # drop the release tail past the last bar
    return lofi_fx(y, got, t.seed)


def fluidsynth_stereo(exe: str, soundfont: Path, mid: Path, sr: int, gain: float) -> tuple[np.ndarray, int]:
    """`mid` rendered by FluidSynth through `soundfont` (a WAV beside it) as float32 stereo, and its rate."""
    from lofi_lora.data import audio as audio_io

    wav = mid.with_suffix(".wav")
    subprocess.run([exe, "-ni", "-q", "-g", str(gain), "-r", str(sr), "-F", str(wav), str(soundfont), str(mid)],
                   check=True, capture_output=True)
    y, got = audio_io.read(wav)
    y = np.asarray(y, dtype=np.float32)
    return (np.stack([y, y]) if y.ndim == 1 else y), got
