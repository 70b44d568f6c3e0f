"""Tensor parity figures and gates shared by every export step (numpy only: the sampler process has no torch)."""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from lofi_lora.core.errors import ExportParityError

log = logging.getLogger(__name__)


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max abs error, max abs error relative to max |ref|, relative L2 and cosine of `got` against `ref`."""
    ref = np.asarray(ref, dtype=np.float64).ravel()
    got = np.asarray(got, dtype=np.float64).ravel()
    if ref.shape != got.shape:
        raise ExportParityError(f"shape mismatch: reference has {ref.size} values, candidate {got.size}")
    if not np.all(np.isfinite(got)):
        bad = int(np.size(got) - np.count_nonzero(np.isfinite(got)))
        return {"max_abs_err": float("inf"), "max_rel_err": float("inf"), "rel_l2": float("inf"),
                "cosine": float("nan"), "non_finite": bad}
    diff = got - ref
    ref_norm = float(np.linalg.norm(ref))
    got_norm = float(np.linalg.norm(got))
    max_ref = float(np.max(np.abs(ref))) if ref.size else 0.0
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    return {
        "max_abs_err": max_abs,
        "max_rel_err": max_abs / max_ref if max_ref > 0 else max_abs,
        "rel_l2": float(np.linalg.norm(diff)) / ref_norm if ref_norm > 0 else float(np.linalg.norm(diff)),
        "cosine": float(ref @ got) / (ref_norm * got_norm) if ref_norm > 0 and got_norm > 0 else float(ref_norm == got_norm),
        "non_finite": 0,
    }


def worst(cases: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Worst figure of each kind over several cases (largest error, smallest cosine)."""
    out: dict[str, float] = {}
    for figs in cases.values():
        for k, v in figs.items():
            if k == "cosine":
                out[k] = min(out.get(k, 1.0), v) if not np.isnan(v) else float("nan")
            else:
                out[k] = max(out.get(k, 0.0), v)
    return out


def check(step: str, figures: Mapping[str, float], tolerance: Mapping[str, float | None]) -> None:
    """Raise ExportParityError naming the step, the figures and the tolerance that failed.

    `tolerance` keys: `rel_l2`, `max_abs_err` (upper bounds) and `cosine` (lower bound); null/absent skips a key.
    """
    failed = []
    if figures.get("non_finite", 0):
        failed.append(f"{figures['non_finite']} non-finite outputs")
    for key in ("rel_l2", "max_abs_err"):
        limit = tolerance.get(key)
        if limit is not None and not figures[key] <= float(limit):
            failed.append(f"{key} {figures[key]:.3e} > {float(limit):.1e}")
    limit = tolerance.get("cosine")
    if limit is not None and not figures["cosine"] >= float(limit):
        failed.append(f"cosine {figures['cosine']:.6f} < {float(limit)}")
    summary = ", ".join(f"{k}={v:.3e}" for k, v in figures.items() if k != "non_finite")
    if failed:
        raise ExportParityError(f"{step}: parity failed ({'; '.join(failed)}); figures: {summary}")
    log.info("%s: parity ok (%s)", step, summary)
