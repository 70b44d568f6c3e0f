"""Bootstrap intervals over clips for FD and KAD, paired between models.

A replicate draws generated clips and reference clips with replacement; every model scored against the same
reference is resampled with the same draws (its samples come in the same prompt x seed order), so the difference of
two models is a paired bootstrap and its interval says whether one beats the other beyond the noise of the clips.
Replicates are computed from per-clip sums, not by concatenating vectors: the FD statistics from each clip's
vector sum and outer-product sum, KAD from clip-by-clip blocks of the kernel matrices, with the diagonal removed as
`fad.kad` removes it from the concatenation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lofi_lora.metrics.fad import GaussianStats, frechet_distance


@dataclass(frozen=True)
class Draws:
    """Replicate index arrays: gen [B, n_gen], ref [B, n_ref]."""

    gen: np.ndarray
    ref: np.ndarray


def draws(n_gen: int, n_ref: int, replicates: int, seed: int) -> Draws:
    """`replicates` resamples with replacement of the generated and the reference clips (seeded)."""
    rng = np.random.default_rng(seed)
    return Draws(rng.integers(0, n_gen, (replicates, n_gen)), rng.integers(0, n_ref, (replicates, n_ref)))


@dataclass(frozen=True)
class ClipSums:
    """Per clip: vector count, vector sum and outer-product sum (float64), so a resample's statistics are sums."""

    counts: np.ndarray   # [n]
    sums: np.ndarray     # [n, d]
    outer: np.ndarray    # [n, d, d]
    bounds: np.ndarray   # [n + 1] offsets of each clip's vectors in the concatenation

    @classmethod
    def of(cls, clips: Sequence[np.ndarray]) -> "ClipSums":
        xs = [np.asarray(c, dtype=np.float64) for c in clips]
        counts = np.array([len(x) for x in xs])
        return cls(counts, np.stack([x.sum(0) for x in xs]), np.stack([x.T @ x for x in xs]),
                   np.concatenate([[0], np.cumsum(counts)]))

    def stats(self, idx: np.ndarray) -> GaussianStats:
        """Mean and unbiased covariance of the concatenation of clips `idx` (repeats included)."""
        n = int(self.counts[idx].sum())
        mu = self.sums[idx].sum(0) / n
        cov = (self.outer[idx].sum(0) - n * np.outer(mu, mu)) / (n - 1)
        return GaussianStats(mu, cov, n, len(idx))


def _block_sums(k: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sums of the kernel matrix over clip-by-clip blocks."""
    return np.add.reduceat(np.add.reduceat(k, rows[:-1], axis=0), cols[:-1], axis=1)


def _rbf(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    sq = np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0, None)
    return np.exp(-sq / (2.0 * bandwidth**2))


def _kad_from_blocks(bxx, byy, bxy, cx: np.ndarray, cy: np.ndarray, nx: np.ndarray, ny: np.ndarray) -> float:
    m, n = float(cx @ nx), float(cy @ ny)
    xx = (cx @ bxx @ cx - m) / (m * (m - 1))   # k(v, v) = 1 on the diagonal of the concatenation
    yy = (cy @ byy @ cy - n) / (n * (n - 1))
    return float(xx + yy - 2.0 * (cx @ bxy @ cy) / (m * n))


@dataclass(frozen=True)
class Reference:
    """The reference clips' sums and KAD blocks, shared by every model compared with them."""

    sums: ClipSums
    vectors: np.ndarray
    bandwidth: float
    kernel_blocks: np.ndarray

    @classmethod
    def of(cls, clips: Sequence[np.ndarray], bandwidth: float) -> "Reference":
        sums = ClipSums.of(clips)
        y = np.concatenate([np.asarray(c, dtype=np.float64) for c in clips])
        return cls(sums, y, bandwidth, _block_sums(_rbf(y, y, bandwidth), sums.bounds, sums.bounds))


def replicates(gen_clips: Sequence[np.ndarray], ref: Reference, d: Draws) -> dict[str, np.ndarray]:
    """FD and KAD of every replicate: {"fd": [B], "kad": [B]}. BLAS runs on one thread: its threads only contend on
    these 128 x 128 eigendecompositions (20x slower on a busy 2-core box)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _replicates(gen_clips, ref, d)


def _replicates(gen_clips: Sequence[np.ndarray], ref: Reference, d: Draws) -> dict[str, np.ndarray]:
    g = ClipSums.of(gen_clips)
    x = np.concatenate([np.asarray(c, dtype=np.float64) for c in gen_clips])
    bxx = _block_sums(_rbf(x, x, ref.bandwidth), g.bounds, g.bounds)
    bxy = _block_sums(_rbf(x, ref.vectors, ref.bandwidth), g.bounds, ref.sums.bounds)
    fd, kd = [], []
    for gi, ri in zip(d.gen, d.ref):
        fd.append(frechet_distance(g.stats(gi), ref.sums.stats(ri)))
        cx = np.bincount(gi, minlength=len(g.counts)).astype(np.float64)
        cy = np.bincount(ri, minlength=len(ref.sums.counts)).astype(np.float64)
        kd.append(_kad_from_blocks(bxx, ref.kernel_blocks, bxy, cx, cy, g.counts.astype(np.float64),
                                   ref.sums.counts.astype(np.float64)))
    return {"fd": np.asarray(fd), "kad": np.asarray(kd)}


def interval(values: np.ndarray, level: float, point: float) -> tuple[float, float]:
    """Percentile interval holding `level` of the replicates, shifted so their median sits at `point` (the figure
    on all clips). Drawing clips with replacement repeats some, which shrinks a set's spread and so inflates FD
    (and KAD) by an amount that can exceed a small distance itself; the shift removes that bias, keeps the spread."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, mid, hi = np.percentile(values, [tail, 50.0, 100.0 - tail])
    return float(lo - mid + point), float(hi - mid + point)


def verdict(low: float, high: float) -> str:
    """How a difference (candidate - reference, lower is better) reads: its interval below 0, above 0, or across."""
    if high < 0.0:
        return "better"
    if low > 0.0:
        return "worse"
    return "within noise"
