"""The lofi finish: tremolo, tape saturation and wow/flutter, low-pass warmth, room, vinyl crackle, rain.

All functions take and return `[2, n]` float64 arrays (or generate one); randomness comes from the
caller's generator, so a seed fixes every sample.
"""
from __future__ import annotations

import numpy as np
from scipy import signal


def lowpass(x: np.ndarray, cutoff_hz: float, sr: int, order: int = 2) -> np.ndarray:
    sos = signal.butter(order, min(cutoff_hz, 0.45 * sr), btype="lowpass", fs=sr, output="sos")
    return signal.sosfilt(sos, x, axis=-1)


def highpass(x: np.ndarray, cutoff_hz: float, sr: int, order: int = 2) -> np.ndarray:
    sos = signal.butter(order, min(cutoff_hz, 0.3 * sr), btype="highpass", fs=sr, output="sos")
    return signal.sosfilt(sos, x, axis=-1)


def autopan_tremolo(x: np.ndarray, sr: int, rate_hz: float, depth: float) -> np.ndarray:
    """Suitcase-Rhodes stereo tremolo: the two sides swing in opposite phase."""
    t = np.arange(x.shape[-1]) / sr
    lfo = 0.5 + 0.5 * np.sin(2 * np.pi * rate_hz * t)
    return np.stack([x[0] * (1 - depth * lfo), x[1] * (1 - depth * (1 - lfo))])


def duck_envelope(hit_times_s: list[float], n: int, sr: int, depth: float, release_s: float = 0.18) -> np.ndarray:
    """Side-chain 'pump': a gain that dips by `depth` at every kick and recovers over `release_s`."""
    imp = np.zeros(n)
    idx = np.round(np.asarray(hit_times_s) * sr).astype(np.int64)
    np.add.at(imp, idx[(idx >= 0) & (idx < n)], 1.0)
    env = signal.lfilter([1.0], [1.0, -np.exp(-1.0 / (release_s * sr))], imp)
    return 1.0 - depth * np.minimum(env, 1.0)


def saturate(x: np.ndarray, drive: float) -> np.ndarray:
    """Soft tape saturation; unity gain for small signals."""
    return np.tanh(drive * x) / drive


def wow_flutter(x: np.ndarray, sr: int, rng: np.random.Generator, wow_ms: float, flutter_ms: float) -> np.ndarray:
    """Tape speed drift as a modulated delay (zero-mean, so the average tempo is untouched)."""
    n = x.shape[-1]
    t = np.arange(n) / sr
    wow_hz, flutter_hz = rng.uniform(0.3, 0.7), rng.uniform(5.0, 8.0)
    delay_s = (wow_ms * (1 + np.sin(2 * np.pi * wow_hz * t + rng.uniform(0, 6.28)))
               + flutter_ms * (1 + np.sin(2 * np.pi * flutter_hz * t + rng.uniform(0, 6.28)))) / 1000.0
    src = t - delay_s
    return np.stack([np.interp(src, t, ch, left=0.0) for ch in x])


def room_ir(sr: int, rng: np.random.Generator, rt60_s: float, length_s: float = 1.6) -> np.ndarray:
    """Stereo impulse response: decorrelated noise with an exponential decay, darker as it decays."""
    n = int(length_s * sr)
    t = np.arange(n) / sr
    env = np.exp(-6.91 * t / rt60_s)
    ir = rng.standard_normal((2, n)) * env
    ir = lowpass(ir, 5000.0, sr)
    ir[:, : int(0.012 * sr)] = 0.0  # pre-delay
    return ir / np.sqrt((ir ** 2).sum(axis=-1, keepdims=True))


def reverb(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """Convolve the mono sum with the stereo IR (float32 FFTs: twice as fast, far below audibility)."""
    n = x.shape[-1]
    mono = x.mean(axis=0).astype(np.float32)
    return signal.fftconvolve(mono[None], ir.astype(np.float32), axes=-1)[:, :n].astype(np.float64)


def vinyl_crackle(n: int, sr: int, rng: np.random.Generator, level: float, clicks_per_s: float = 12.0) -> np.ndarray:
    """Surface hiss + sparse clicks and the odd low pop, slightly different in each channel."""
    surface = rng.standard_normal((2, n)) * 0.12
    n_clicks = rng.poisson(clicks_per_s * n / sr)
    pos = rng.integers(0, n, size=n_clicks)
    amp = rng.exponential(0.35, size=n_clicks) * rng.choice([-1.0, 1.0], size=n_clicks)
    side = rng.integers(0, 3, size=n_clicks)  # 0 left, 1 right, 2 both
    np.add.at(surface[0], pos[side != 1], amp[side != 1])
    np.add.at(surface[1], pos[side != 0], 0.9 * amp[side != 0])
    sos = signal.butter(2, [900.0, min(8000.0, 0.45 * sr)], btype="bandpass", fs=sr, output="sos")
    out = signal.sosfilt(sos, surface, axis=-1)
    # Dust on the groove: a low pop every couple of seconds.
    m = int(0.01 * sr)
    pop = np.exp(-np.arange(m) / (0.002 * sr)) * np.sin(2 * np.pi * 300 * np.arange(m) / sr)
    for p in rng.integers(0, max(1, n - m), size=rng.poisson(0.5 * n / sr)):
        out[:, p:p + m] += pop * rng.uniform(0.2, 0.6)
    return out * level


def rain(n: int, sr: int, rng: np.random.Generator, level: float) -> np.ndarray:
    """Rain on a window: band-limited noise swelling slowly, plus droplet ticks."""
    t = np.arange(n) / sr
    bed = lowpass(highpass(rng.standard_normal((2, n)), 400.0, sr), 7000.0, sr)
    bed *= 0.8 + 0.2 * np.sin(2 * np.pi * 0.07 * t + rng.uniform(0, 6.28))
    drops = np.zeros((2, n))
    k = rng.poisson(25 * n / sr)
    drops[rng.integers(0, 2, size=k), rng.integers(0, n, size=k)] = rng.exponential(1.0, size=k)
    sos = signal.butter(2, [2000, min(6000, 0.45 * sr)], btype="bandpass", fs=sr, output="sos")
    drops = signal.sosfilt(sos, drops, axis=-1)
    return (bed * 0.25 + drops * 0.6) * level


def fade(x: np.ndarray, sr: int, in_s: float, out_s: float) -> np.ndarray:
    n = x.shape[-1]
    g = np.ones(n)
    a, b = int(in_s * sr), int(out_s * sr)
    if a:
        g[:a] = np.linspace(0, 1, a) ** 2
    if b:
        g[n - b:] *= np.linspace(1, 0, b) ** 1.5
    return x * g


def normalize_peak(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = float(np.max(np.abs(x)))
    return x if peak == 0 else x * (10 ** (peak_dbfs / 20) / peak)
