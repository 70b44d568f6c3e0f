"""Render one lofi track from a TrackSpec: arrangement (sections on bars), score, instruments, lofi finish.

The beat grid starts at t = 0 and runs at exactly `spec.bpm`; every chord is diatonic to `spec.tonic`
`spec.mode` and the bass plays its roots, so the spec is the ground truth of the audio.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from lofi_lora.synth import drums, effects
from lofi_lora.synth.styles import Style, style_for
from lofi_lora.synth.theory import (Chord, bass_root, diatonic_chord, progression_bars, scale_pcs, tonic_pc,
                                    voice_lead, voicing_pcs)
from lofi_lora.synth.voices import NoteRenderer

log = logging.getLogger(__name__)

MIN_BARS = 4


@dataclass(frozen=True)
class TrackSpec:
    """What to render; the track is the whole number of bars that fits in `seconds` (at least 4)."""

    track_id: str
    style_id: str
    bpm: float
    tonic: str
    mode: str  # "major" | "minor"
    seconds: float
    seed: int
    beats_per_bar: int = 4


@dataclass(frozen=True)
class Note:
    time_s: float
    dur_s: float
    midi: int
    vel: float


def bar_length_s(spec: TrackSpec) -> float:
    return spec.beats_per_bar * 60.0 / spec.bpm


def n_bars_for(spec: TrackSpec) -> int:
    """Whole bars that fit in `spec.seconds` (at least MIN_BARS): a track never outgrows its target length."""
    return max(MIN_BARS, int(spec.seconds / bar_length_s(spec) + 1e-9))


def section_plan(n_bars: int) -> list[tuple[str, int, int]]:
    """(type, first bar, end bar) covering every bar: intro, verse, break (no drums), verse, outro."""
    if n_bars < 5:
        return [("intro", 0, 1), ("verse", 1, n_bars - 1), ("outro", n_bars - 1, n_bars)]
    intro = 1 if n_bars < 10 else 2
    outro = 1 if n_bars < 12 else 2
    rest = n_bars - intro - outro
    brk = 1 if rest < 8 else 2
    v1 = math.ceil((rest - brk) / 2)
    v2 = rest - brk - v1
    plan, bar = [], 0
    for kind, length in (("intro", intro), ("verse", v1), ("break", brk), ("verse", v2), ("outro", outro)):
        if length:
            plan.append((kind, bar, bar + length))
            bar += length
    return plan


def render_track(spec: TrackSpec, sample_rate: int = 44100) -> tuple[np.ndarray, list[dict]]:
    """Render `spec`: `[2, N]` float32 peaking at -3 dBFS, and its sections `[{"start","end","type"}]` (s)."""
    if spec.mode not in ("major", "minor"):
        raise ValueError(f"{spec.track_id}: mode {spec.mode!r} is not 'major' or 'minor'")
    if spec.beats_per_bar not in (3, 4):
        raise ValueError(f"{spec.track_id}: beats_per_bar {spec.beats_per_bar} is not 3 or 4")
    tonic_pc(spec.tonic)
    style = style_for(spec.style_id)
    sr = sample_rate
    bar_s, beat_s = bar_length_s(spec), 60.0 / spec.bpm
    n_bars = n_bars_for(spec)
    n = int(round(n_bars * bar_s * sr))
    plan = section_plan(n_bars)
    bar_kind = [k for k, a, b in plan for _ in range(a, b)]

    def rng(part: int) -> np.random.Generator:
        return np.random.default_rng([spec.seed, part])  # one stream per part: parts vary independently

    score = _Score(spec, style, bar_kind, beat_s, bar_s, rng(1))
    voices = NoteRenderer(sr)
    pad_n = n + int(3 * sr)

    keys = _render_notes(score.keys, style.keys, voices, pad_n, sr)
    lead = _render_notes(score.lead, style.lead, voices, pad_n, sr) if style.lead else np.zeros(pad_n)
    bass = effects.lowpass(_render_notes(score.bass, style.bass_voice, voices, pad_n, sr), 1200.0, sr)
    if style.drums:
        kit = drums.drum_kit(rng(2), sr, heavy=1.0 if style.drums == "heavy" else 0.0)
        drum_bus = drums.render_hits(score.drums, kit, pad_n, sr, rng(3))
    else:
        drum_bus = np.zeros((2, pad_n))

    keys_st = np.stack([keys, np.concatenate([np.zeros(int(0.011 * sr)), keys[: pad_n - int(0.011 * sr)]])])
    keys_st = 0.8 * keys_st + 0.2 * keys_st[::-1]
    if style.tremolo:
        keys_st = effects.autopan_tremolo(keys_st, sr, rate_hz=4.5 * spec.bpm / 80.0, depth=style.tremolo)
    lead_st = np.stack([lead * 0.85, lead])
    if style.duck:
        kicks = [h.time_s for h in score.drums if h.sound == "kick"]
        duck = effects.duck_envelope(kicks, pad_n, sr, style.duck)
        keys_st, lead_st = keys_st * duck, lead_st * duck
    drum_gain = 0.45 if style.drums == "sparse" else 0.9
    dry = 0.55 * keys_st + 0.3 * lead_st + 0.75 * bass[None] + drum_gain * drum_bus
    ir = effects.room_ir(sr, rng(4), rt60_s=1.4 + style.reverb_mix * 3)
    wet = effects.reverb(0.6 * keys_st + 0.8 * lead_st + 0.25 * drum_bus, ir)
    mix = _master((dry + style.reverb_mix * wet)[:, :n], style, plan, bar_s, beat_s, sr, rng(5))
    sections = [{"start": round(a * bar_s, 4), "end": round(b * bar_s, 4) if b < n_bars else round(n / sr, 4),
                 "type": kind} for kind, a, b in plan]
    return mix.astype(np.float32), sections


def _master(mix: np.ndarray, style: Style, plan: list[tuple[str, int, int]], bar_s: float, beat_s: float, sr: int,
            fx: np.random.Generator) -> np.ndarray:
    """The lofi finish: saturation, low-pass warmth, filtered intro, tape wow/flutter, crackle/rain, fades."""
    n = mix.shape[-1]
    mix = effects.highpass(mix, 30.0, sr)
    mix = effects.normalize_peak(mix, -3.0)
    mix = effects.saturate(mix, 1.6)
    mix = effects.lowpass(mix, style.lowpass_hz, sr)
    mix = _filtered_intro(mix, plan, bar_s, beat_s, sr)
    mix = effects.wow_flutter(mix, sr, fx, wow_ms=style.wow_ms, flutter_ms=0.06)
    mix = effects.normalize_peak(mix, -4.0)
    mix += effects.vinyl_crackle(n, sr, fx, style.crackle)
    if style.rain:
        mix += effects.rain(n, sr, fx, style.rain)
    mix = effects.fade(mix, sr, in_s=0.01, out_s=min(bar_s, 3.0))
    return effects.normalize_peak(mix, -3.0)


def _filtered_intro(mix: np.ndarray, plan: list[tuple[str, int, int]], bar_s: float, beat_s: float,
                    sr: int) -> np.ndarray:
    """The intro sounds through a closed low-pass that opens over its last beat."""
    kind, _, end = plan[0]
    if kind != "intro":
        return mix
    b = int(end * bar_s * sr)
    dark = effects.lowpass(mix[:, :b + int(beat_s * sr)], 1100.0, sr)
    g = np.ones(dark.shape[-1])
    ramp_a = max(0, b - int(beat_s * sr))
    g[ramp_a:b] = np.linspace(1, 0, b - ramp_a)
    g[b:] = 0.0
    out = mix.copy()
    out[:, : dark.shape[-1]] = g * dark * 1.3 + (1 - g) * mix[:, : dark.shape[-1]]
    return out


def _render_notes(notes: list[Note], voice: str, voices: NoteRenderer, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    for note in notes:
        x = voices.note(voice, note.midi, note.dur_s, 1.0)
        i = max(0, int(round(note.time_s * sr)))
        if i >= n:
            continue
        seg = x[: n - i]
        out[i:i + seg.size] += seg * note.vel
    return out


class _Score:
    """Chords per bar, comping, bass line, lead motif and drum hits for one track."""

    def __init__(self, spec: TrackSpec, style: Style, bar_kind: list[str], beat_s: float, bar_s: float,
                 rng: np.random.Generator):
        self.spec, self.style, self.rng = spec, style, rng
        self.beat_s, self.bar_s, self.bpb = beat_s, bar_s, spec.beats_per_bar
        pool = style.progressions_minor if spec.mode == "minor" else style.progressions_major
        prog = progression_bars(spec.tonic, spec.mode, pool[int(rng.integers(len(pool)))], style.ninths)
        tonic = diatonic_chord(spec.tonic, spec.mode, 0, style.ninths)
        # Intro and outro rest on the tonic chord: the loop starts from (and returns to) home.
        self.chords: list[Chord] = [tonic if k in ("intro", "outro") else prog[i % len(prog)]
                                    for i, k in enumerate(bar_kind)]
        self.scale = scale_pcs(spec.tonic, spec.mode)
        self.keys: list[Note] = []
        self.bass: list[Note] = []
        self.lead: list[Note] = []
        self.drums: list[drums.Hit] = []
        self._comp(bar_kind)
        self._bassline(bar_kind)
        self._melody(bar_kind)
        self._beats(bar_kind)

    def _t(self, bar: int, beat: float, swing: bool = True) -> float:
        """Time of `beat` (in beats, may be fractional) in `bar`; off-beat 16ths are swung."""
        t = bar * self.bar_s + beat * self.beat_s
        if swing:
            t += drums.swing_delay_s(beat, self.style.swing, self.style.swing_unit, self.beat_s)
        return t

    def _comp(self, bar_kind: list[str]) -> None:
        prev = None
        strum = 0.0 if self.style.comp == "pad" else 0.014
        for bar, (chord, kind) in enumerate(zip(self.chords, bar_kind)):
            voicing = voice_lead(voicing_pcs(chord), prev)
            prev = voicing
            notes = list(voicing)
            notes = [bass_root(chord.root_pc, low=43)] + notes  # left hand: the root, G2..F#3
            if self.style.comp == "pad":
                hits = [(0.0, self.bpb * 1.0, 0.8)]
            elif self.style.comp == "charleston":
                hits = ([(0.0, 1.2, 0.85), (1.5, 0.5, 0.6)] if self.bpb == 4
                        else [(0.0, 0.9, 0.85), (1.0, 0.7, 0.5), (2.0, 0.7, 0.5)])  # waltz: oom-pah-pah
            elif self.style.comp == "stabs":
                hits = [(0.0, 0.9, 0.9), (1.5, 0.4, 0.65), (2.5, 1.2, 0.8)]
            else:
                hits = [(0.0, self.bpb - 0.15, 0.85)]
                if kind == "verse" and self.rng.random() < 0.4:
                    hits = [(0.0, 2.3, 0.85), (2.5, 1.3, 0.6)]
            if kind in ("intro", "outro"):
                hits = [(0.0, self.bpb * 1.0, 0.75)]  # a held chord sets up (and closes) the key
            for beat, dur, vel in hits:
                for j, m in enumerate(notes):
                    t = self._t(bar, beat) + j * strum + float(self.rng.normal(0, 0.003))
                    v = vel * self.rng.uniform(0.85, 1.0) * (0.8 if j == 0 else 1.0)
                    self.keys.append(Note(max(t, 0.0), dur * self.beat_s, m, v))

    def _bassline(self, bar_kind: list[str]) -> None:
        pat = self.style.bass_pattern
        for bar, (chord, kind) in enumerate(zip(self.chords, bar_kind)):
            if kind in ("intro", "outro"):
                continue
            root = bass_root(chord.root_pc)
            fifth = root + chord.intervals[2]
            nxt = self.chords[bar + 1] if bar + 1 < len(self.chords) else chord
            approach = self._approach(bass_root(nxt.root_pc))
            if pat == "walking":
                third = root + chord.intervals[1]
                line = [root, third if self.rng.random() < 0.5 else fifth, fifth, approach]
                if self.bpb == 3:
                    line = [root, fifth, approach]
                notes = [(float(b), 0.92, m, 0.85 if b == 0 else 0.7) for b, m in enumerate(line)]
            elif pat == "sustain":
                notes = [(0.0, self.bpb - 0.1, root, 0.7)]
            elif pat == "syncopated":
                notes = [(0.0, 0.7, root, 0.95), (0.75, 0.2, root + 12, 0.5), (1.5, 0.45, root, 0.75),
                         (2.5, 0.45, fifth, 0.75), (3.5, 0.25, approach, 0.6)]
            else:
                notes = [(0.0, 1.6, root, 0.95), (2.5, 1.2, root if self.rng.random() < 0.6 else fifth, 0.75)]
                if self.bpb == 3:
                    notes = [(0.0, 2.4, root, 0.95)]
            for beat, dur, m, v in notes:
                if beat >= self.bpb:
                    continue
                self.bass.append(Note(self._t(bar, beat), dur * self.beat_s, int(m), v * self.rng.uniform(0.9, 1.0)))

    def _approach(self, target: int) -> int:
        """A scale tone next to the next root (diatonic, so the key stays clean)."""
        below = [target - d for d in (1, 2) if (target - d) % 12 in self.scale]
        above = [target + d for d in (1, 2) if (target + d) % 12 in self.scale]
        cands = below + above
        return cands[int(self.rng.integers(len(cands)))] if cands else target

    def _melody(self, bar_kind: list[str]) -> None:
        """A 2-bar motif (rhythm + contour) repeated in the verses, snapped to the current chord's tones."""
        if not self.style.lead:
            return
        slots = 2 * self.bpb * 2  # 8th notes in two bars
        n_notes = 3 if self.style.category == "AMB" else int(self.rng.integers(4, 7))
        onsets = sorted(self.rng.choice(slots, size=n_notes, replace=False).tolist())
        contour = 74 + np.cumsum(self.rng.integers(-4, 5, size=n_notes))
        contour = np.clip(contour, 67, 84)
        for bar, kind in enumerate(bar_kind):
            if kind != "verse" or bar % 2:
                continue
            for i, slot in enumerate(onsets):
                b = bar + slot // (2 * self.bpb)
                if b >= len(bar_kind) or bar_kind[b] != "verse":
                    continue
                beat = (slot % (2 * self.bpb)) / 2
                nxt = onsets[i + 1] if i + 1 < len(onsets) else slots
                dur = min((nxt - slot) / 2, 2.0) * 0.9
                pcs = self.chords[b].pcs
                target = int(contour[i])
                midi = min((m for m in range(target - 6, target + 7) if m % 12 in pcs),
                           key=lambda m: (abs(m - target), m))
                self.lead.append(Note(self._t(b, beat), dur * self.beat_s, midi, float(self.rng.uniform(0.5, 0.8))))

    def _beats(self, bar_kind: list[str]) -> None:
        if not self.style.drums:
            return
        main = int(self.rng.integers(3))
        for bar, kind in enumerate(bar_kind):
            if kind != "verse":
                continue
            variation = main + (1 if bar % 4 == 3 else 0)
            self.drums += drums.bar_hits(self.style.drums, bar * self.bar_s, self.beat_s, self.bpb, self.style.swing,
                                         self.style.swing_unit, self.rng, variation)
