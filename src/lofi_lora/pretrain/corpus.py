"""A broad, captioned, NON-lofi corpus for pretraining the tiny base (issue 25).

Eight styles far from the demo's lofi target (rock, pop, classical, techno, chiptune, marching brass, folk,
ambient), built from the synth package's theory, drum sounds and voices plus `pretrain.voices`. Everything the
demo's LoRA is meant to learn is left out on purpose: no lofi families or presets, no tape saturation, wow/flutter,
vinyl crackle, rain or low-pass finish, and no swing (every grid is straight). A clip is fully determined by
(seed, index): `plan_corpus` draws style, tempo, key, progression and caption, `render_clip` the audio.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from lofi_lora.synth import drums, effects
from lofi_lora.synth.theory import NOTE_NAMES, bass_root, progression_bars, voice_lead
from lofi_lora.synth.voices import NoteRenderer
from lofi_lora.pretrain.voices import VOICES

SAMPLE_RATE = 48000
PROG_MAJOR = ("I-vi-IV-V", "I-IV", "I-iii-vi-IV", "I-vi-ii-V", "ii-V-I", "I-IV-iii-vi")
PROG_MINOR = ("i-VI-III-VII", "i-iv", "i-iv-VII-III", "i-VI-iv-v")


@dataclass(frozen=True)
class Genre:
    """How one pretraining style sounds and how it is captioned."""

    tags: tuple[str, ...]         # genre words; the first always leads the caption
    instruments: tuple[str, ...]  # what the caption says is playing (all of it is rendered)
    moods: tuple[str, ...]
    bpm: tuple[int, int]
    minor_prob: float
    comp_voice: str
    comp: str                     # power | strum8 | pad | stabs | arp16 | quarter | fingerpick
    lead_voice: str | None
    bass_voice: str
    bass: str                     # eighths | roots | sustain | offbeat | octaves | oompah
    drums: str | None             # key of DRUMS
    reverb: float
    comp_octave: int = 0          # shift of the chord voicing (semitones)


GENRES: dict[str, Genre] = {
    "rock": Genre(("rock", "hard rock"), ("overdriven electric guitar", "bass guitar", "rock drum kit"),
                  ("energetic", "driving", "rebellious", "anthemic"), (110, 150), 0.5, "drive_guitar", "power",
                  None, "bass", "eighths", "rock", 0.08, -12),
    "pop": Genre(("pop", "dance pop"), ("grand piano", "synth lead", "bass guitar", "drum kit"),
                 ("upbeat", "bright", "catchy", "happy"), (96, 124), 0.2, "piano", "strum8", "synth_keys", "bass",
                 "roots", "pop", 0.12),
    "classical": Genre(("classical", "orchestral"), ("string ensemble", "grand piano"),
                       ("elegant", "romantic", "dramatic", "serene"), (60, 96), 0.4, "strings", "pad", "piano",
                       "strings", "sustain", None, 0.35),
    "techno": Genre(("techno", "house"), ("four-on-the-floor kick", "synth bass", "synth stabs", "hi-hats"),
                    ("hypnotic", "energetic", "dark", "euphoric"), (120, 132), 0.8, "synth_keys", "stabs", None,
                    "synth_keys", "offbeat", "four", 0.15),
    "chiptune": Genre(("chiptune", "8-bit video game music"), ("square wave lead", "triangle bass", "noise drums"),
                      ("playful", "adventurous", "nostalgic", "upbeat"), (130, 170), 0.4, "pulse", "arp16", "pulse",
                      "triangle", "octaves", "chip", 0.0, 12),
    "brass": Genre(("marching band", "brass band"), ("brass section", "tuba", "snare drum", "bass drum"),
                   ("triumphant", "proud", "festive", "bold"), (100, 124), 0.15, "brass", "quarter", "brass", "brass",
                   "oompah", "march", 0.22),
    "folk": Genre(("folk", "acoustic folk"), ("fingerpicked acoustic guitar", "upright bass", "shaker"),
                  ("warm", "earnest", "pastoral", "heartfelt"), (80, 112), 0.4, "pluck", "fingerpick", None,
                  "upright", "roots", "shaker", 0.15),
    "ambient": Genre(("ambient", "drone"), ("organ drone", "string pad"), ("spacious", "meditative", "calm", "vast"),
                     (60, 80), 0.5, "strings", "pad", None, "organ", "sustain", None, 0.5),
}

# Straight 16th-grid drum patterns (one 4/4 bar): sound -> {step: velocity}. Hats etc. are added by rule below.
DRUMS: dict[str, dict[str, dict[int, float]]] = {
    "rock": {"kick": {0: 1.0, 8: 0.95, 10: 0.8}, "snare": {4: 1.0, 12: 1.0}},
    "pop": {"kick": {0: 1.0, 6: 0.8, 8: 0.9}, "snare": {4: 1.0, 12: 1.0}},
    "four": {"kick": {0: 1.0, 4: 1.0, 8: 1.0, 12: 1.0}, "snare": {4: 0.7, 12: 0.7},
             "open_hat": {2: 0.6, 6: 0.6, 10: 0.6, 14: 0.6}},
    "chip": {"kick": {0: 1.0, 8: 0.9}, "snare": {4: 0.9, 12: 0.9}},
    "march": {"kick": {0: 1.0, 8: 1.0}},
    "shaker": {"kick": {0: 0.5}},
}


@dataclass(frozen=True)
class ClipSpec:
    """One clip of the corpus: everything `render_clip` needs, and its caption and metas (ACE-Step sidecar)."""

    clip_id: str
    genre: str
    caption: str
    bpm: int
    tonic: str
    mode: str
    progression: str
    seconds: float
    seed: int

    @property
    def keyscale(self) -> str:
        return f"{self.tonic} {self.mode}"


def plan_corpus(seed: int, clips_per_genre: int, seconds: float, genres: tuple[str, ...] | None = None) -> list[ClipSpec]:
    """Every clip, interleaved by genre, drawn from one generator seeded by `seed` (same args -> same plan)."""
    names = tuple(genres or GENRES)
    rng = np.random.default_rng([seed, 0x9E7])
    plan = []
    for i in range(clips_per_genre):
        for name in names:
            g = GENRES[name]
            mode = "minor" if rng.random() < g.minor_prob else "major"
            prog = (PROG_MINOR if mode == "minor" else PROG_MAJOR)[int(rng.integers(len(PROG_MINOR if mode == "minor"
                                                                                        else PROG_MAJOR)))]
            moods = rng.choice(len(g.moods), size=2, replace=False)
            tags = [g.tags[0]] + ([g.tags[1]] if rng.random() < 0.5 else [])
            caption = ", ".join([*tags, *g.instruments, *(g.moods[int(m)] for m in sorted(moods))])
            plan.append(ClipSpec(f"{name}_{i:04d}", name, caption, int(rng.integers(g.bpm[0], g.bpm[1] + 1)),
                                 NOTE_NAMES[int(rng.integers(12))], mode, prog, float(seconds),
                                 int(rng.integers(2**31 - 1))))
    return plan


def plan_hash(plan: list[ClipSpec]) -> str:
    """sha256 of the plan (specs and captions): equal on every machine, unlike float audio bytes."""
    blob = json.dumps([asdict(c) for c in plan], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def render_clip(spec: ClipSpec, sr: int = SAMPLE_RATE) -> np.ndarray:
    """`[2, round(seconds * sr)]` float32 peaking between -7 and -1 dBFS."""
    g = GENRES[spec.genre]
    rng = np.random.default_rng([spec.seed, 1])
    beat_s = 60.0 / spec.bpm
    bar_s = 4 * beat_s
    n = int(round(spec.seconds * sr))
    n_bars = math.ceil(spec.seconds / bar_s) + 1
    pad_n = int((n_bars * bar_s + 3.0) * sr)
    chords = progression_bars(spec.tonic, spec.mode, spec.progression, ninths=False)
    chords = [chords[b % len(chords)] for b in range(n_bars)]
    cache = NoteRenderer(sr, VOICES)
    comp, lead, bass = _Score(g, spec, chords, beat_s, bar_s, rng).parts()

    def stem(notes, voice):
        out = np.zeros(pad_n, dtype=np.float32)
        for t, dur, midi, vel in notes:
            x = cache.note(voice, midi, dur, 1.0).astype(np.float32, copy=False)
            i = int(round(t * sr))
            if i < pad_n:
                seg = x[: pad_n - i]
                out[i:i + seg.size] += seg * vel
        return out

    pan_c, pan_l = rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.4)
    comp_st = _pan(stem(comp, g.comp_voice), pan_c)
    lead_st = _pan(stem(lead, g.lead_voice), pan_l) if g.lead_voice else np.zeros((2, pad_n))
    bass_st = _pan(stem(bass, g.bass_voice), 0.0)
    if g.drums:
        kit = drums.drum_kit(np.random.default_rng([spec.seed, 2]), sr)
        hits = [h for b in range(n_bars) for h in _drum_bar(g.drums, b * bar_s, beat_s, rng)]
        drum_st = drums.render_hits(hits, kit, pad_n, sr, np.random.default_rng([spec.seed, 3]))
    else:
        drum_st = np.zeros((2, pad_n))
    gains = rng.uniform(0.8, 1.2, size=4)
    dry = 0.5 * gains[0] * comp_st + 0.4 * gains[1] * lead_st + 0.6 * gains[2] * bass_st + 0.8 * gains[3] * drum_st
    if g.reverb:
        ir = effects.room_ir(sr, np.random.default_rng([spec.seed, 4]), rt60_s=0.8 + 3 * g.reverb)
        dry = dry + g.reverb * effects.reverb(0.7 * comp_st + 0.7 * lead_st + 0.3 * drum_st, ir)
    start = int(rng.integers(0, max(1, int(bar_s * sr) // 2)))  # clips need not start on the downbeat
    mix = effects.highpass(dry[:, start:start + n], 30.0, sr)
    mix = effects.fade(mix, sr, in_s=0.005, out_s=0.005)
    return effects.normalize_peak(mix, float(rng.uniform(-7.0, -1.0))).astype(np.float32)


def _pan(x: np.ndarray, pan: float) -> np.ndarray:
    a = (pan + 1) * np.pi / 4
    return np.stack([np.cos(a) * x, np.sin(a) * x]).astype(np.float64)


def _drum_bar(style: str, t0: float, beat_s: float, rng: np.random.Generator) -> list[drums.Hit]:
    """One straight bar of `style` (no swing: 16th steps at exactly beat/4), velocities humanised a little."""
    step_s = beat_s / 4
    hits = [drums.Hit(t0 + s * step_s, sound, v * float(rng.uniform(0.85, 1.0)))
            for sound, steps in DRUMS[style].items() for s, v in steps.items()]
    every = {"rock": 2, "pop": 1, "four": 1, "chip": 2}.get(style)
    if every:
        for s in range(0, 16, every):
            hits.append(drums.Hit(t0 + s * step_s, "hat", (0.7 if s % 4 == 0 else 0.45) * float(rng.uniform(0.7, 1)),
                                  0.3))
    if style == "march":  # snare on every 16th with accents and a roll into the bar end
        for s in range(16):
            hits.append(drums.Hit(t0 + s * step_s, "snare", (1.0 if s % 4 == 0 else 0.4) * float(rng.uniform(0.8, 1))))
    if style == "shaker":
        for s in range(0, 16, 2):
            hits.append(drums.Hit(t0 + s * step_s, "shaker", 0.6 if s % 4 == 0 else 0.4, 0.4))
    return hits


class _Score:
    """Chord comping, an optional lead line and a bass line as (time s, duration s, midi, velocity) notes."""

    def __init__(self, g: Genre, spec: ClipSpec, chords, beat_s: float, bar_s: float, rng: np.random.Generator):
        self.g, self.spec, self.chords, self.beat_s, self.bar_s, self.rng = g, spec, chords, beat_s, bar_s, rng

    def parts(self):
        return self._comp(), self._lead(), self._bass()

    def _comp(self):
        out, prev = [], None
        b = self.beat_s
        for bar, chord in enumerate(self.chords):
            t0 = bar * self.bar_s
            triad = list(chord.pcs[:3])
            voicing = [m + self.g.comp_octave for m in voice_lead(triad, prev, low=55, high=76)]
            prev = [m - self.g.comp_octave for m in voicing]
            root = voicing[0] - (voicing[0] - chord.root_pc) % 12
            c = self.g.comp
            if c == "power":  # root-fifth-octave on straight 8ths
                notes = [bass_root(chord.root_pc, 40) + 12 + self.g.comp_octave + i for i in (0, 7, 12)]
                out += [(t0 + k * b / 2, b / 2 * 0.9, m, 0.9 if k % 2 == 0 else 0.7) for k in range(8) for m in notes]
            elif c == "strum8":
                out += [(t0 + k * b / 2 + j * 0.008, b / 2 * 0.95, m, 0.8 if k % 2 == 0 else 0.55)
                        for k in range(8) for j, m in enumerate(voicing)]
            elif c == "pad":
                out += [(t0, self.bar_s * 0.98, m, 0.7) for m in voicing]
            elif c == "stabs":  # off-beat stabs
                out += [(t0 + (k + 0.5) * b, b * 0.25, m, 0.8) for k in range(4) for m in voicing]
            elif c == "arp16":
                seq = voicing + [voicing[1]]
                out += [(t0 + k * b / 4, b / 4 * 0.9, seq[k % len(seq)], 0.7) for k in range(16)]
            elif c == "quarter":
                out += [(t0 + k * b, b * 0.8, m, 0.9 if k == 0 else 0.7) for k in range(4) for m in voicing]
            elif c == "fingerpick":  # thumb on the root, fingers cycling the triad on 8ths
                bass_note = root - 12 if root - 12 >= 40 else root
                seq = [bass_note, voicing[1], voicing[2], voicing[0] + 12, bass_note + 7, voicing[2], voicing[1],
                       voicing[0] + 12]
                out += [(t0 + k * b / 2, b * 1.2, seq[k], 0.75 if k % 4 == 0 else 0.55) for k in range(8)]
        return out

    def _lead(self):
        if not self.g.lead_voice:
            return []
        b, rng = self.beat_s, self.rng
        if self.g.comp == "pad" and self.g.lead_voice == "piano":  # classical
            out = []
            for bar, chord in enumerate(self.chords):  # rising 8th-note arpeggios over the strings
                pcs = list(chord.pcs[:3])
                seq = [bass_root(pcs[k % 3], 60) + 12 * (k // 3) for k in range(8)]
                out += [(bar * self.bar_s + k * b / 2, b * 0.6, m, 0.6) for k, m in enumerate(seq)]
            return out
        slots = 16  # a 2-bar motif on 8ths, snapped to chord tones, repeated
        k = int(rng.integers(4, 8))
        onsets = sorted(rng.choice(slots, size=k, replace=False).tolist())
        contour = np.clip(74 + np.cumsum(rng.integers(-3, 4, size=k)), 67, 86)
        out = []
        for bar in range(0, len(self.chords), 2):
            for i, s in enumerate(onsets):
                bb = bar + s // 8
                if bb >= len(self.chords):
                    continue
                nxt = onsets[i + 1] if i + 1 < k else slots
                pcs = self.chords[bb].pcs[:3]
                midi = min((m for m in range(int(contour[i]) - 6, int(contour[i]) + 7) if m % 12 in pcs),
                           key=lambda m: (abs(m - int(contour[i])), m))
                out.append((bb * self.bar_s + (s % 8) * b / 2, (nxt - s) * b / 2 * 0.85, midi, 0.75))
        return out

    def _bass(self):
        out, b = [], self.beat_s
        for bar, chord in enumerate(self.chords):
            t0 = bar * self.bar_s
            root = bass_root(chord.root_pc)
            fifth = root + 7
            p = self.g.bass
            if p == "eighths":
                out += [(t0 + k * b / 2, b / 2 * 0.9, root, 0.9) for k in range(8)]
            elif p == "roots":
                out += [(t0, 1.8 * b, root, 0.9), (t0 + 2 * b, 1.8 * b, fifth if bar % 2 else root, 0.8)]
            elif p == "sustain":
                out += [(t0, self.bar_s * 0.98, root, 0.8)]
            elif p == "offbeat":
                out += [(t0 + (k + 0.5) * b, b * 0.4, root + 12, 0.9) for k in range(4)]
            elif p == "octaves":
                out += [(t0 + k * b / 2, b / 2 * 0.8, root + 12 * (k % 2) + 12, 0.8) for k in range(8)]
            elif p == "oompah":
                out += [(t0 + k * b, b * 0.7, root if k % 2 == 0 else fifth, 0.85) for k in range(4)]
        return out


def render_corpus(plan: list[ClipSpec], workers: int = 1, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, str]:
    """All clips as one `[n_clips, 2, N]` float32 array (plan order) and the sha256 of its bytes."""
    if workers <= 1:
        clips = [render_clip(c, sr) for c in plan]
    else:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            clips = list(pool.map(render_clip, plan, [sr] * len(plan), chunksize=4))
    audio = np.stack(clips)
    return audio, hashlib.sha256(audio.tobytes()).hexdigest()


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))
