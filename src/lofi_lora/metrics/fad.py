"""Fréchet distance between embedding distributions, and its small-sample-bias-free extrapolation (FD-inf).

Written in the project (not frechet_audio_distance / fadtk) because those swallow errors, sample FD-inf with
replacement (which leaves the k/N bias in) and pin numpy<2. Statistics are float64 with ddof=1; the trace of
the matrix square root comes from symmetric eigendecompositions, so no complex `sqrtm` and no jitter.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a set of embedding vectors, with how many vectors (and clips) made them."""

    mu: np.ndarray
    cov: np.ndarray
    n_vectors: int
    n_clips: int | None = None

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def gaussian_stats(x: np.ndarray, n_clips: int | None = None) -> GaussianStats:
    """Float64 mean and unbiased covariance (ddof=1) of `x` [n, d]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 embedding vectors for a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    return GaussianStats(x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False, ddof=1)), int(x.shape[0]), n_clips)


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) as the sum of sqrt-eigenvalues of the symmetric PSD S1^{1/2} S2 S1^{1/2}."""
    r1 = _sym_sqrt(np.asarray(s1, dtype=np.float64))
    m = r1 @ np.asarray(s2, dtype=np.float64) @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2}); a tiny negative result is clipped to 0."""
    if a.dim != b.dim:
        raise ValueError(f"embedding dimensions differ: {a.dim} vs {b.dim}")
    d = a.mu - b.mu
    fd = float(d @ d + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt_product(a.cov, b.cov))
    if fd < 0.0:
        scale = float(np.trace(a.cov) + np.trace(b.cov)) or 1.0
        if fd < -1e-8 * scale:
            log.warning("Fréchet distance %.3g < 0 beyond round-off (scale %.3g); clipped to 0", fd, scale)
        fd = 0.0
    return fd


@dataclass
class FDInf:
    """FD extrapolated to infinitely many eval vectors: FD(n) ~ fd_inf + slope / n, fitted over subsets."""

    fd_inf: float
    slope: float
    r2: float
    n_vectors: list[int] = field(default_factory=list)
    n_clips: list[int] = field(default_factory=list)
    fd: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"fd_inf": self.fd_inf, "slope": self.slope, "r2": self.r2,
                "points": [{"n_clips": c, "n_vectors": v, "fd": f} for c, v, f in zip(self.n_clips, self.n_vectors, self.fd)]}


def fd_inf(eval_clips: Sequence[np.ndarray], ref: GaussianStats, num_points: int = 10, min_fraction: float = 0.2,
           repeats: int = 3, seed: int = 0) -> FDInf:
    """FD-inf by subsampling whole clips WITHOUT replacement at several sizes and fitting FD = a + b/n.

    Each subset of n clips is marginally an i.i.d. sample of that size, so the intercept removes the k/n bias
    (bootstrap resampling, as fadtk does, keeps the k/N bias of the full set). n is the number of embedding
    vectors in the subset; each size is averaged over `repeats` draws. A seeded RNG makes it reproducible.
    """
    clips = [np.asarray(c, dtype=np.float64) for c in eval_clips]
    n_total = len(clips)
    if n_total < 2:
        raise ValueError(f"FD-inf needs at least 2 eval clips, got {n_total}")
    lo = max(2, int(np.ceil(min_fraction * n_total)))
    sizes = sorted({int(round(s)) for s in np.linspace(lo, n_total, max(2, num_points))})
    rng = np.random.default_rng(seed)
    xs, ys, nv, nc = [], [], [], []
    for n in sizes:
        vals, counts = [], []
        for _ in range(1 if n == n_total else repeats):
            idx = rng.permutation(n_total)[:n]
            x = np.concatenate([clips[i] for i in idx], axis=0)
            if x.shape[0] < 2:
                continue
            vals.append(frechet_distance(gaussian_stats(x), ref))
            counts.append(x.shape[0])
        if not vals:
            continue
        nv.append(int(round(np.mean(counts))))
        nc.append(n)
        ys.append(float(np.mean(vals)))
        xs.append(1.0 / float(np.mean(counts)))
    if len(set(xs)) < 2:
        raise ValueError(f"FD-inf needs at least 2 distinct subset sizes; got {sorted(set(nv))} vectors")
    x_arr, y_arr = np.asarray(xs), np.asarray(ys)
    slope, intercept = np.polyfit(x_arr, y_arr, 1)
    pred = intercept + slope * x_arr
    ss_res = float(((y_arr - pred) ** 2).sum())
    ss_tot = float(((y_arr - y_arr.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return FDInf(float(intercept), float(slope), float(r2), nv, nc, ys)


def kad(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> tuple[float, float]:
    """Unbiased MMD^2 with a Gaussian RBF kernel (KAD), bandwidth fixed from the reference set `y`.

    Returns (kad, bandwidth). The bandwidth defaults to the median pairwise distance within `y`, so two
    runs against the same reference use the same kernel.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("KAD needs at least 2 vectors per set")

    def sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0, None)

    dyy = sq(y, y)
    if bandwidth is None:
        off = dyy[~np.eye(len(y), dtype=bool)]
        bandwidth = float(np.sqrt(np.median(off))) or 1.0
    g = 1.0 / (2.0 * bandwidth**2)
    kxx, kyy, kxy = np.exp(-g * sq(x, x)), np.exp(-g * dyy), np.exp(-g * sq(x, y))
    m, n = len(x), len(y)
    val = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
           - 2.0 * kxy.mean())
    return float(val), float(bandwidth)
