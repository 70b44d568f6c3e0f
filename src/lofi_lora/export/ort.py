"""onnxruntime sessions, denoiser calls and latency (numpy + onnxruntime only: used by the torch-free sampler)."""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

DENOISER_INPUTS = ("hidden_states", "timestep", "timestep_r", "encoder_hidden_states", "context_latents")


def providers(prefer_gpu: bool = True) -> list[str]:
    """CUDA EP first when this onnxruntime build has it, CPU EP always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if prefer_gpu and p in available]
    return chosen + ["CPUExecutionProvider"]


def session(path: str | Path, threads: int | None = None, prefer_gpu: bool = True):
    """An InferenceSession on `path` (external data is read from beside it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers(prefer_gpu))


def pad_frames(inputs: Mapping[str, np.ndarray], multiple: int = 2) -> tuple[dict[str, np.ndarray], int]:
    """Zero-pad the frame axis of the latents to a multiple of the patch size.

    The exported graph declares frames = 2 * k (the transformer pads odd lengths itself, a shape-dependent
    branch the exporter cannot keep dynamic); zero-padding both latents before the call is exactly what the
    transformer does after concatenating them, and the caller cuts the output back to `frames`.
    """
    frames = int(inputs["hidden_states"].shape[1])
    pad = (-frames) % multiple
    out = dict(inputs)
    if pad:
        for key in ("hidden_states", "context_latents"):
            out[key] = np.pad(inputs[key], ((0, 0), (0, pad), (0, 0)))
    return out, frames


def run_denoiser(sess, inputs: Mapping[str, np.ndarray], patch_size: int = 2) -> np.ndarray:
    """One denoiser call: velocity `[B, frames, C]` in float32 for any frame count."""
    padded, frames = pad_frames(inputs, patch_size)
    feed = {k: np.ascontiguousarray(padded[k], dtype=np.float32) for k in DENOISER_INPUTS}
    (velocity,) = sess.run(None, feed)
    return np.asarray(velocity[:, :frames], dtype=np.float32)


def median_latency_ms(fn, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median and spread of `fn()` wall time in ms over `repeats` calls after `warmup` calls."""
    for _ in range(max(0, warmup)):
        fn()
    times: list[float] = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": len(times)}


def file_bytes(paths: Sequence[Path]) -> int:
    return sum(Path(p).stat().st_size for p in paths)
