"""Structural events of a clip (intro, loop, break, drop, outro) with an intensity 0-1.

Boundaries come from a checkerboard novelty curve over a beat-synchronous self-similarity matrix of timbre
(MFCC), harmony (chroma) and loudness; a boundary needs a novelty peak above a threshold, so a clip that
never changes stays one `loop`. Types follow from position and intensity (loudness and onset activity): a quiet opening is an intro, a
quiet ending an outro, a dip in the middle a break, and the loud section right after a break a drop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lofi_lora.annotate.features import Features

EVENT_TYPES = ("intro", "loop", "break", "drop", "outro")


@dataclass(frozen=True)
class Event:
    start: float
    end: float
    type: str
    intensity: float
    label: str           # A, B, ...: sections with the same label sound alike

    def to_json(self) -> dict:
        d = asdict(self)
        d["start"], d["end"] = round(float(self.start), 2), round(float(self.end), 2)
        d["intensity"] = round(float(self.intensity), 3)
        return d


def _blocks(feats: Features, beat_period_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beat-synchronous features [d, n], block start times [n+1] and block loudness dB [n]."""
    hop_s = feats.onset_hop_s
    n_frames = feats.mfcc.shape[1]
    per = max(beat_period_s / hop_s, 1.0)
    edges = np.unique(np.round(np.arange(0, n_frames + per, per)).astype(int).clip(0, n_frames))
    if len(edges) < 2:
        edges = np.array([0, n_frames])
    mf = np.stack([feats.mfcc[:, a:b].mean(axis=1) for a, b in zip(edges[:-1], edges[1:]) if b > a], axis=1)
    loud = np.array([_db_mean(feats.rms_db[a:b]) for a, b in zip(edges[:-1], edges[1:]) if b > a])
    onset = np.array([feats.onset_env[a:b].mean() for a, b in zip(edges[:-1], edges[1:]) if b > a])
    ratio = feats.chroma_hop_s / hop_s
    ch_idx = np.minimum((edges / ratio).astype(int), feats.chroma.shape[1])
    chroma = []
    for a, b in zip(ch_idx[:-1], ch_idx[1:]):
        seg = feats.chroma[:, a:max(b, a + 1)] if a < feats.chroma.shape[1] else feats.chroma[:, -1:]
        v = seg.mean(axis=1)
        chroma.append(v / (v.max() + 1e-12))
    chroma = np.stack(chroma[: mf.shape[1]], axis=1)
    x = np.vstack([_z(mf[1:]), _z(chroma), 2.0 * _z(loud[None]), _z(onset[None])])
    times = edges * hop_s
    return x, times[: x.shape[1] + 1], loud


def _db_mean(db: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(10 ** (db / 10)) + 1e-12)) if db.size else -120.0


def _z(a: np.ndarray) -> np.ndarray:
    return (a - a.mean(axis=1, keepdims=True)) / (a.std(axis=1, keepdims=True) + 0.5)


def _novelty(x: np.ndarray, half_width: int) -> np.ndarray:
    n = x.shape[1]
    d2 = ((x[:, :, None] - x[:, None, :]) ** 2).sum(axis=0)
    scale = np.median(d2[d2 > 0]) if np.any(d2 > 0) else 1.0
    s = np.exp(-d2 / scale)
    w = half_width
    sign = np.sign(np.arange(-w, w) + 0.5)
    kernel = np.outer(sign, sign)  # +1 within each side, -1 across the boundary
    pad = np.pad(s, w, mode="edge")
    nov = np.array([(kernel * pad[i:i + 2 * w, i:i + 2 * w]).sum() for i in range(n)]) / (2 * w * w)
    return nov


def segment(feats: Features, beat_period_s: float, min_event_s: float = 2.5, threshold: float = 0.25) -> list[Event]:
    """Events covering [0, duration] of a clip."""
    x, times, loud = _blocks(feats, beat_period_s)
    n = x.shape[1]
    dur = feats.duration_s
    min_blocks = max(int(round(min_event_s / beat_period_s)), 1)
    bounds = [0]
    if n >= 2 * min_blocks:
        w = max(2, min(4, n // 4))
        nov = _novelty(x, w)
        cand = [i for i in range(min_blocks, n - min_blocks + 1)
                if nov[i] >= threshold and nov[i] == nov[max(i - w, 0): i + w + 1].max()]
        for i in sorted(cand, key=lambda i: -nov[i]):
            if all(abs(i - b) >= min_blocks for b in bounds + [n]):
                bounds.append(i)
    bounds = sorted(bounds) + [n]
    segs = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    seg_db = np.array([_db_mean(loud[a:b]) for a, b in segs])
    loud_rel = np.clip(1.0 + (seg_db - seg_db.max()) / 20.0, 0.0, 1.0)   # 20 dB below the peak section -> 0
    onset = x[-1]
    act = np.array([onset[a:b].mean() for a, b in segs])
    act = (act - act.min()) / (act.max() - act.min()) if act.max() > act.min() else np.ones_like(act)
    intensity = 0.75 * loud_rel + 0.25 * act
    labels = _labels(x, segs)
    types = _types(intensity)
    starts = [float(times[a]) for a, _ in segs]
    ends = starts[1:] + [dur]
    return [Event(s, min(e, dur), t, float(i), lab) for s, e, t, i, lab in zip(starts, ends, types, intensity, labels)]


def _types(intensity: np.ndarray, dip: float = 0.25) -> list[str]:
    """Type per section from its intensity relative to the strongest section (a dip of `dip` or more is
    quiet: a held intro chord without drums, a break, a fading outro)."""
    n = len(intensity)
    if n == 1:
        return ["loop"]
    peak = intensity.max()
    types = ["loop"] * n
    for i in range(n):
        if intensity[i] < peak - dip:
            types[i] = "intro" if i == 0 else ("outro" if i == n - 1 else "break")
    for i in range(1, n):
        if types[i] == "loop" and types[i - 1] == "break" and intensity[i] - intensity[i - 1] >= dip:
            types[i] = "drop"
    return types


def _labels(x: np.ndarray, segs: list[tuple[int, int]], same: float = 0.5) -> list[str]:
    """Letter per section; a section reuses an earlier letter when its mean features are close."""
    means = [x[:, a:b].mean(axis=1) for a, b in segs]
    scale = np.sqrt(x.shape[0])
    letters: list[str] = []
    protos: list[np.ndarray] = []
    for m in means:
        dists = [np.linalg.norm(m - p) / scale for p in protos]
        if dists and min(dists) < same:
            letters.append(chr(65 + int(np.argmin(dists))))
        else:
            protos.append(m)
            letters.append(chr(65 + len(protos) - 1))
    return letters
