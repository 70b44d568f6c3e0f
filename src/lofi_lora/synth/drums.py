"""Synthesised drum sounds and swung boom-bap / brush / chill patterns on a 16th-note grid.

Hits land on the beat grid at exactly the track's BPM; swing delays only the off-beat subdivisions and the
humanising jitter is zero-mean, so a beat tracker finds the true tempo.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n)


def _band(x: np.ndarray, lo: float | None, hi: float | None, sr: int, order: int = 2) -> np.ndarray:
    """Band/high/low-pass; edges above 0.45 * sr are pulled under Nyquist (lower sample rates stay valid)."""
    lo = min(lo, 0.3 * sr) if lo else None
    hi = min(hi, 0.45 * sr) if hi else None
    if lo and hi:
        sos = signal.butter(order, [lo, hi], btype="bandpass", fs=sr, output="sos")
    elif lo:
        sos = signal.butter(order, lo, btype="highpass", fs=sr, output="sos")
    else:
        sos = signal.butter(order, hi, btype="lowpass", fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def kick(rng: np.random.Generator, sr: int, heavy: float = 0.0) -> np.ndarray:
    n = int(0.7 * sr)
    t = np.arange(n) / sr
    f_hi, f_lo = rng.uniform(110, 150), rng.uniform(44, 54) - 6 * heavy
    f = f_lo + (f_hi - f_lo) * np.exp(-t / 0.035)
    body = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / (0.22 + 0.15 * heavy))
    click = _band(_noise(rng, n), None, 3000, sr) * np.exp(-t / 0.003) * 0.25
    return np.tanh(1.8 * (body + click)) / np.tanh(1.8)


def snare(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(0.45 * sr)
    t = np.arange(n) / sr
    tone = np.sin(2 * np.pi * rng.uniform(175, 205) * t) * np.exp(-t / 0.05) * 0.55
    rattle = _band(_noise(rng, n), 1200, 7500, sr) * np.exp(-t / rng.uniform(0.09, 0.14)) * 1.6
    return (tone + rattle) * (1 - np.exp(-t / 0.001))


def rim(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(0.08 * sr)
    t = np.arange(n) / sr
    y = np.sin(2 * np.pi * rng.uniform(1600, 1900) * t) * np.exp(-t / 0.01)
    return y + _band(_noise(rng, n), 2000, 6000, sr) * np.exp(-t / 0.006) * 0.5


def hat(rng: np.random.Generator, sr: int, open_: bool = False) -> np.ndarray:
    n = int((0.5 if open_ else 0.12) * sr)
    t = np.arange(n) / sr
    y = _band(_noise(rng, n), 4500, None, sr, order=4)
    return y * np.exp(-t / (0.22 if open_ else rng.uniform(0.022, 0.035))) * 1.4


def ride(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(1.0 * sr)
    t = np.arange(n) / sr
    partials = rng.uniform(3000, 8000, size=6)
    y = sum(np.sin(2 * np.pi * p * t + rng.uniform(0, 6.28)) for p in partials) / 6
    y = y * np.exp(-t / 0.45) + _band(_noise(rng, n), 5000, None, sr) * np.exp(-t / 0.25) * 0.4
    return y * (1 - np.exp(-t / 0.001)) * 0.6


def brush(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A brush sweep: band-passed noise swelling over ~0.2 s."""
    n = int(0.35 * sr)
    t = np.arange(n) / sr
    env = (t / 0.12) * np.exp(1 - t / 0.12)
    return _band(_noise(rng, n), 1500, 7000, sr) * env * 0.45


def brush_tap(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(0.25 * sr)
    t = np.arange(n) / sr
    return _band(_noise(rng, n), 900, 6000, sr) * np.exp(-t / 0.07) * 1.2


def shaker(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(0.12 * sr)
    t = np.arange(n) / sr
    env = (1 - np.exp(-t / 0.012)) * np.exp(-t / 0.035)
    return _band(_noise(rng, n), 5000, 12000, sr) * env * 0.8


SOUNDS = {"kick": kick, "snare": snare, "rim": rim, "hat": hat, "ride": ride, "brush": brush,
          "brush_tap": brush_tap, "shaker": shaker}


def drum_kit(rng: np.random.Generator, sr: int, heavy: float = 0.0, variants: int = 3) -> dict[str, list[np.ndarray]]:
    """A few variants of every sound (round robin, so repeated hits are not identical)."""
    kit = {name: [fn(rng, sr) if name != "kick" else kick(rng, sr, heavy) for _ in range(variants)]
           for name, fn in SOUNDS.items()}
    kit["open_hat"] = [hat(rng, sr, open_=True) for _ in range(variants)]
    return kit


@dataclass(frozen=True)
class Hit:
    time_s: float
    sound: str
    vel: float
    pan: float = 0.0  # -1 left .. +1 right


# 16th-step patterns for one 4/4 bar (12 steps for 3/4): step -> velocity.
PATTERNS: dict[str, list[dict[str, dict[int, float]]]] = {
    "boombap": [
        {"kick": {0: 1.0, 10: 0.85}, "snare": {4: 0.95, 12: 1.0}},
        {"kick": {0: 1.0, 7: 0.7, 10: 0.9}, "snare": {4: 0.95, 12: 1.0}},
        {"kick": {0: 1.0, 3: 0.6, 8: 0.85}, "snare": {4: 1.0, 12: 0.95, 15: 0.35}},
    ],
    "heavy": [
        {"kick": {0: 1.0, 11: 0.9}, "snare": {8: 1.0}},
        {"kick": {0: 1.0, 6: 0.6, 11: 0.85}, "snare": {8: 1.0}},
    ],
    "chill": [
        {"kick": {0: 1.0, 3: 0.7, 8: 0.9, 10: 0.75}, "snare": {4: 1.0, 12: 1.0, 7: 0.3}},
        {"kick": {0: 1.0, 6: 0.8, 10: 0.8}, "snare": {4: 1.0, 12: 1.0, 14: 0.3}},
    ],
    "brushes": [
        {"kick": {0: 0.55, 8: 0.45}, "brush_tap": {4: 0.8, 12: 0.85}},
    ],
    "sparse": [
        {"kick": {0: 0.7}, "rim": {8: 0.5}},
        {"kick": {0: 0.7, 10: 0.4}, "rim": {12: 0.45}},
    ],
    "waltz": [
        {"kick": {0: 0.7}, "brush_tap": {4: 0.6, 8: 0.7}},
    ],
}


def swing_delay_s(pos_beats: float, swing: float, unit: int, beat_s: float) -> float:
    """MPC-style swing: the off-beat 8th (unit 8) or the off-beat 16ths (unit 16) land late.

    `swing` is the share of the pair's length taken by its first note (0.5 straight, 0.67 triplet feel).
    """
    frac = pos_beats % 1.0
    if unit == 8 and abs(frac - 0.5) < 1e-6:
        return (swing - 0.5) * beat_s
    if unit == 16 and min(abs(frac - 0.25), abs(frac - 0.75)) < 1e-6:
        return (swing - 0.5) * beat_s / 2
    return 0.0


def bar_hits(kit_style: str, bar_start_s: float, beat_s: float, beats_per_bar: int, swing: float, swing_unit: int,
             rng: np.random.Generator, variation: int) -> list[Hit]:
    """Hits of one bar: pattern `variation`, hats/ride/shakers with swing and velocity accents."""
    steps = 4 * beats_per_bar

    def t_of(step: int) -> float:
        return bar_start_s + step * beat_s / 4 + swing_delay_s(step / 4, swing, swing_unit, beat_s)

    def jitter(scale_s: float) -> float:
        return float(rng.normal(0.0, scale_s))  # zero-mean: humanises without moving the tempo

    name = "waltz" if beats_per_bar == 3 else kit_style
    pats = PATTERNS[name]
    pat = pats[variation % len(pats)]
    hits: list[Hit] = []
    for sound, steps_vel in pat.items():
        for step, v in steps_vel.items():
            if step < steps:
                hits.append(Hit(t_of(step) + jitter(0.003), sound, float(np.clip(v * rng.uniform(0.88, 1.0), 0, 1))))
    if kit_style in ("boombap", "heavy", "chill"):
        every = 1 if kit_style == "chill" else 2
        for step in range(0, steps, every):
            accent = 1.0 if step % 4 == 0 else (0.7 if step % 2 == 0 else 0.45)
            if kit_style == "heavy" and step % 4 != 0 and rng.random() < 0.25:
                continue
            sound = "open_hat" if (step == steps - 2 and rng.random() < 0.3) else "hat"
            hits.append(Hit(t_of(step) + jitter(0.004), sound, accent * rng.uniform(0.55, 0.8), 0.3))
    elif kit_style == "brushes" or name == "waltz":
        # Ride "ding, ding-a ding" on the swung 8th grid plus a brush sweep into every beat.
        for beat in range(beats_per_bar):
            hits.append(Hit(t_of(4 * beat) + jitter(0.004), "ride", 0.55 + 0.15 * (beat % 2), 0.35))
            hits.append(Hit(t_of(4 * beat) - 0.05, "brush", rng.uniform(0.5, 0.7), -0.3))
            if beat % 2 == 1:
                hits.append(Hit(t_of(4 * beat + 2) + jitter(0.004), "ride", 0.4, 0.35))
    elif kit_style == "sparse":
        for step in range(0, steps, 2):
            hits.append(Hit(t_of(step) + jitter(0.005), "shaker",
                            rng.uniform(0.25, 0.45) * (1.0 if step % 4 == 0 else 0.7), 0.4))
    return hits


def render_hits(hits: list[Hit], kit: dict[str, list[np.ndarray]], n: int, sr: int,
                rng: np.random.Generator) -> np.ndarray:
    """Place every hit into a stereo buffer `[2, n]` with equal-power panning."""
    out = np.zeros((2, n))
    for h in hits:
        variants = kit[h.sound]
        x = variants[int(rng.integers(len(variants)))]
        i = int(round(h.time_s * sr))
        if i >= n:
            continue
        j0 = max(0, -i)
        seg = x[j0:j0 + n - max(i, 0)] * h.vel
        a = (h.pan + 1) * np.pi / 4
        out[0, max(i, 0):max(i, 0) + seg.size] += np.cos(a) * seg
        out[1, max(i, 0):max(i, 0) + seg.size] += np.sin(a) * seg
    return out
