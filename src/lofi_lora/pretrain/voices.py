"""Pitched voices the lofi kit lacks, for the pretraining styles: pulse (chiptune), triangle, pluck, brass,
overdriven guitar and a bright string section. Same contract as `lofi_lora.synth.voices`: a mono note `[n]`."""
from __future__ import annotations

from typing import Callable

import numpy as np

from lofi_lora.synth import voices as lofi_voices
from lofi_lora.synth.theory import midi_to_hz
from lofi_lora.synth.voices import _env_ad, _osc, _release, _saw_amps, _time, _wavetable


def _odd_amps(freq_hz: float, max_hz: float, duty_tilt: float = 1.0) -> np.ndarray:
    """Band-limited square-ish spectrum: odd harmonics 1/k (even ones a little, for a 25 % pulse colour)."""
    n = max(1, min(40, int(max_hz // freq_hz)))
    k = np.arange(1, n + 1)
    return np.where(k % 2 == 1, 1.0 / k, 0.35 * duty_tilt / k)


def pulse(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Chiptune pulse lead: flat gate envelope, hard edges, no filter."""
    f = midi_to_hz(midi)
    n = int((dur_s + 0.03) * sr)
    y = _osc(_wavetable(_odd_amps(f, 12000.0)), f, n, sr)
    env = np.ones(n, dtype=np.float32)
    return _release(env, sr, dur_s, 0.01) * y * 0.35 * (0.6 + 0.4 * vel)


def triangle(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Chiptune triangle bass: odd harmonics 1/k^2."""
    f = midi_to_hz(midi)
    n = int((dur_s + 0.03) * sr)
    k = np.arange(1, max(2, min(30, int(8000 // f))) + 1)
    amps = np.where(k % 2 == 1, (-1.0) ** ((k - 1) // 2) / k ** 2, 0.0)
    y = _osc(_wavetable(amps), f, n, sr)
    return _release(np.ones(n, dtype=np.float32), sr, dur_s, 0.01) * y * 0.8 * (0.6 + 0.4 * vel)


def pluck(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Steel-string pluck: bright harmonics that die fast, the fundamental rings (acoustic guitar, fingerpicked)."""
    f = midi_to_hz(midi)
    n = int(min(dur_s + 0.6, 3.0) * sr)
    t = _time(n, sr)
    y = np.zeros(n, dtype=np.float32)
    for k in range(1, 16):
        if k * f > sr / 2.3:
            break
        pos = np.sin(np.pi * k * 0.18)  # plucked near the bridge: the comb of the pick position
        y += (pos / k) * np.exp(-t * (1.2 + 0.9 * k)) * np.sin(2 * np.pi * k * f * t)
    y *= 1 - np.exp(-t / 0.0008)
    return _release(y, sr, dur_s + 0.4, 0.2) * (0.5 + 0.5 * vel)


def brass(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Brass section: a saw whose brightness swells with the attack (the 'blat'), slight vibrato."""
    f = midi_to_hz(midi)
    n = int((dur_s + 0.15) * sr)
    t = _time(n, sr)
    vib = 1 + 0.004 * np.sin(2 * np.pi * 5.5 * t) * (1 - np.exp(-t / 0.4))
    ph = np.cumsum(f * vib) / sr
    bright = _wavetable(_saw_amps(f, 6000.0, 0.9))
    dark = _wavetable(_saw_amps(f, 1500.0, 1.6))
    pos = ((ph % 1.0) * lofi_voices.TABLE_SIZE).astype(np.int64)
    swell = np.exp(-t / 0.12)
    y = swell * bright[pos] + (1 - swell) * (0.5 * bright[pos] + 0.5 * dark[pos])
    env = (1 - np.exp(-t / 0.03)) * (0.8 + 0.2 * np.exp(-t / 0.3))
    return _release(env, sr, dur_s, 0.08) * y * 0.3 * (0.5 + 0.5 * vel)


def drive_guitar(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Overdriven electric guitar (one string of a power chord): a bright saw into hard tanh clipping."""
    f = midi_to_hz(midi)
    n = int((dur_s + 0.1) * sr)
    t = _time(n, sr)
    y = _osc(_wavetable(_saw_amps(f, 5000.0, 1.1)), f * 1.002, n, sr) + _osc(_wavetable(_saw_amps(f, 5000.0, 1.1)),
                                                                             f * 0.998, n, sr, 0.4)
    y = np.tanh(6.0 * y) * 0.5
    env = _env_ad(n, sr, 0.003, 2.5)
    return _release(env, sr, dur_s, 0.05) * y * (0.6 + 0.4 * vel)


def strings(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Bowed string section: five detuned bright saws, moderate attack, vibrato (brighter than the lofi pad)."""
    f = midi_to_hz(midi)
    n = int((dur_s + 0.5) * sr)
    t = _time(n, sr)
    y = np.zeros(n, dtype=np.float32)
    for i, cents in enumerate((-12.0, -5.0, 0.0, 6.0, 11.0)):
        fi = f * 2 ** (cents / 1200)
        vib = 1 + 0.003 * np.sin(2 * np.pi * (5.0 + 0.3 * i) * t + i)
        ph = np.cumsum(fi * vib) / sr + 0.17 * i
        table = _wavetable(_saw_amps(fi, 7000.0, 1.2))
        y += table[((ph % 1.0) * lofi_voices.TABLE_SIZE).astype(np.int64)]
    env = 1 - np.exp(-t / 0.12)
    return _release(env, sr, dur_s, 0.3) * y * 0.12 * (0.6 + 0.4 * vel)


def organ(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Drawbar organ: sine partials at 8', 4', 2 2/3', 2' with a percussive click, no decay."""
    f = midi_to_hz(midi)
    n = int((dur_s + 0.05) * sr)
    t = _time(n, sr)
    y = sum(a * np.sin(2 * np.pi * m * f * t) for m, a in ((1, 1.0), (2, 0.7), (3, 0.5), (4, 0.4), (6, 0.2))
            if m * f < sr / 2.3)
    y = y + 0.3 * np.exp(-t / 0.01) * np.sin(2 * np.pi * 3 * f * t)
    return _release(np.ones(n, dtype=np.float32), sr, dur_s, 0.02) * y * 0.25 * (0.7 + 0.3 * vel)


VOICES: dict[str, Callable[[int, float, float, int], np.ndarray]] = {
    **lofi_voices.VOICES, "pulse": pulse, "triangle": triangle, "pluck": pluck, "brass": brass,
    "drive_guitar": drive_guitar, "strings": strings, "organ": organ,
}
