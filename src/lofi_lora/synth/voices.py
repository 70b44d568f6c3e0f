"""Pitched instruments: FM electric piano, additive piano, wavetable pad and detuned synth keys, bass, bell.

Every voice returns a mono note `[n]` float32 at unit-ish level. Notes repeat across a loop, so renders are
cached per track by (voice, midi, duration, velocity step).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from lofi_lora.synth.theory import midi_to_hz

TABLE_SIZE = 4096


def _time(n: int, sr: int) -> np.ndarray:
    """Sample times in float32: voices are rendered at single precision (twice as fast, inaudible)."""
    return np.arange(n, dtype=np.float32) / np.float32(sr)


def _env_ad(n: int, sr: int, attack_s: float, decay_s: float) -> np.ndarray:
    t = _time(n, sr)
    return (1.0 - np.exp(-t / max(attack_s, 1e-4))) * np.exp(-t / decay_s)


def _release(env: np.ndarray, sr: int, hold_s: float, release_s: float) -> np.ndarray:
    """Damp the note after `hold_s` (key up) with an exponential release."""
    k = int(hold_s * sr)
    env = env.copy()
    if k < env.size:
        env[k:] *= np.exp(-np.arange(env.size - k, dtype=np.float32) / np.float32(release_s * sr))
    m = min(env.size, int(0.02 * sr))  # renders are cut short once inaudible: end without a click
    env[env.size - m:] *= np.linspace(1, 0, m, dtype=np.float32)
    return env


def _wavetable(amps: np.ndarray) -> np.ndarray:
    """One period of a band-limited waveform with harmonic amplitudes `amps` (index 0 = fundamental)."""
    ph = np.arange(TABLE_SIZE) / TABLE_SIZE
    k = np.arange(1, amps.size + 1)[:, None]
    return (amps[:, None] * np.sin(2 * np.pi * k * ph)).sum(axis=0).astype(np.float32)


def _osc(table: np.ndarray, freq_hz: float, n: int, sr: int, phase0: float = 0.0) -> np.ndarray:
    pos = ((phase0 + freq_hz * np.arange(n) / sr) % 1.0) * TABLE_SIZE
    i = pos.astype(np.int64)
    frac = (pos - i).astype(np.float32)
    return table[i] * (1 - frac) + table[(i + 1) % TABLE_SIZE] * frac


def _saw_amps(freq_hz: float, max_hz: float, tilt: float = 1.0) -> np.ndarray:
    n = max(1, min(40, int(max_hz // freq_hz)))
    return 1.0 / np.arange(1, n + 1) ** tilt


def rhodes(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Two-operator FM tine piano: a 1:1 pair whose index decays (bark) plus a 14:1 tine ping."""
    f = midi_to_hz(midi)
    decay = float(np.clip(2.8 * (261.6 / f) ** 0.5, 0.7, 5.0))
    n = int(min(dur_s + 0.4, 5 * decay) * sr)  # past 5 time constants the note is below -40 dB
    t = _time(n, sr)
    env = _release(_env_ad(n, sr, 0.002, decay), sr, dur_s, 0.09)
    index = vel * (0.35 + 1.8 * np.exp(-t / 0.06))
    carrier = 2 * np.pi * f * t
    y = np.sin(carrier + index * np.sin(carrier))
    if 14 * f < sr / 2.2:
        k = min(n, int(0.08 * sr))  # the ping has died out after ~7 time constants
        tk = t[:k]
        ping = np.exp(-tk / 0.012) * np.sin(carrier[:k] + 1.2 * vel * np.sin(14 * carrier[:k]))
        y[:k] += 0.35 * vel * ping
    return env * y * (0.6 + 0.4 * vel)


def piano(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Additive felt piano: inharmonic partials, two-stage decay, detuned unison string and a hammer thump."""
    f = midi_to_hz(midi)
    base = float(np.clip(3.5 * (261.6 / f) ** 0.6, 0.6, 7.0))
    n = int(min(dur_s + 0.5, 4 * base) * sr)
    t = _time(n, sr)
    bright = 0.35 + 0.35 * vel
    y = np.zeros(n, dtype=np.float32)
    for k in range(1, 9):
        fk = k * f * np.sqrt(1 + 0.0004 * k * k)
        if fk > sr / 2.3:
            break
        amp = bright ** (k - 1) / k ** 0.8
        dk = (1 + 0.45 * (k - 1)) / base
        env = 0.55 * np.exp(-t * dk * 4) + 0.45 * np.exp(-t * dk)
        y += amp * env * (np.sin(2 * np.pi * fk * t) + (0.5 * np.sin(2 * np.pi * fk * 1.0007 * t) if k == 1 else 0))
    y *= 1 - np.exp(-t / 0.0015)
    return _release(y, sr, dur_s, 0.12) * (0.5 + 0.5 * vel) * 0.7


def pad(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Three detuned band-limited saws (dark), slow attack and long release: an ambient string pad."""
    f = midi_to_hz(midi)
    n = int((dur_s + 1.5) * sr)
    y = np.zeros(n, dtype=np.float32)
    for i, cents in enumerate((-9.0, 0.0, 7.0)):
        fi = f * 2 ** (cents / 1200)
        y += _osc(_wavetable(_saw_amps(fi, 2200.0, 1.6)), fi, n, sr, phase0=0.31 * i)
    env = 1 - np.exp(-np.arange(n) / (0.6 * sr))
    return _release(env, sr, dur_s, 0.7) * y * 0.33 * (0.6 + 0.4 * vel)


def synth_keys(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Detuned two-saw synth with a closing 'filter' (bright table fading into a dark one)."""
    f = midi_to_hz(midi)
    n = int((dur_s + 0.6) * sr)
    t = _time(n, sr)
    y_bright = np.zeros(n, dtype=np.float32)
    y_dark = np.zeros(n, dtype=np.float32)
    for i, cents in enumerate((-14.0, 12.0)):
        fi = f * 2 ** (cents / 1200)
        y_bright += _osc(_wavetable(_saw_amps(fi, 5000.0, 1.0)), fi, n, sr, 0.2 * i)
        y_dark += _osc(_wavetable(_saw_amps(fi, 1200.0, 1.8)), fi, n, sr, 0.2 * i)
    mix = np.exp(-t / 0.25)
    y = mix * y_bright * 0.6 + (1 - mix) * y_dark
    env = _env_ad(n, sr, 0.008, 3.0) * 0.7 + 0.3 * (1 - np.exp(-t / 0.01))
    return _release(env, sr, dur_s, 0.35) * y * 0.3 * (0.6 + 0.4 * vel)


def bell(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Soft FM bell / vibraphone for sparse ambient melodies."""
    f = midi_to_hz(midi)
    n = int((dur_s + 1.2) * sr)
    t = _time(n, sr)
    env = _release(_env_ad(n, sr, 0.003, 1.6), sr, dur_s, 0.6)
    y = np.sin(2 * np.pi * f * t + 0.8 * np.exp(-t / 0.3) * np.sin(2 * np.pi * 4.0 * f * t))
    return env * y * (0.5 + 0.5 * vel)


def bass(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Round electric bass: a few decaying harmonics (upper ones faster), finger attack, damped at note off."""
    f = midi_to_hz(midi)
    n = int((dur_s + 0.15) * sr)
    t = _time(n, sr)
    y = np.zeros(n, dtype=np.float32)
    for k, a in enumerate((1.0, 0.55, 0.3, 0.16, 0.08, 0.04), start=1):
        y += a * np.exp(-t * (0.6 + 3.0 * (k - 1) * (0.5 + vel))) * np.sin(2 * np.pi * k * f * t)
    env = (1 - np.exp(-t / 0.004)) * (0.6 + 0.4 * np.exp(-t / 0.35))
    return _release(env, sr, dur_s, 0.05) * y * (0.55 + 0.45 * vel)


def upright(midi: int, dur_s: float, vel: float, sr: int) -> np.ndarray:
    """Upright-ish bass for jazz: fast decay, slight pitch drop on the pluck."""
    f = midi_to_hz(midi)
    n = int((dur_s + 0.12) * sr)
    t = _time(n, sr)
    inst_f = f * (1 + 0.012 * np.exp(-t / 0.02))
    ph = 2 * np.pi * np.cumsum(inst_f) / sr
    y = np.sin(ph) + 0.45 * np.exp(-t * 6) * np.sin(2 * ph) + 0.2 * np.exp(-t * 12) * np.sin(3 * ph)
    env = (1 - np.exp(-t / 0.003)) * np.exp(-t / 0.6)
    return _release(env, sr, dur_s, 0.05) * y * (0.6 + 0.4 * vel)


VOICES: dict[str, Callable[[int, float, float, int], np.ndarray]] = {
    "rhodes": rhodes, "piano": piano, "pad": pad, "synth_keys": synth_keys, "bell": bell,
    "bass": bass, "upright": upright,
}


class NoteRenderer:
    """Renders notes through a per-track cache: loops repeat, so most notes are rendered once."""

    def __init__(self, sr: int, voices: dict | None = None):
        self.sr = sr
        self.voices = VOICES if voices is None else voices
        self._cache: dict[tuple, np.ndarray] = {}

    def note(self, voice: str, midi: int, dur_s: float, vel: float) -> np.ndarray:
        key = (voice, int(midi), round(dur_s, 2), round(vel * 8) / 8)
        if key not in self._cache:
            self._cache[key] = self.voices[voice](key[1], key[2], max(key[3], 0.125), self.sr)
        return self._cache[key]
