"""Process-wide set-up: seeds, and the device and dtypes every stage runs its models with."""
from __future__ import annotations

import fcntl
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lofi_lora.core.errors import ConfigError

log = logging.getLogger(__name__)
GIB = 2**30


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # stages that never touch torch
        pass


_claimed: tuple[str, object] | None = None  # (device, open lock file): the GPU this process holds until it exits


def gpu_lock_dir() -> Path:
    return Path(os.environ.get("LOFI_LORA_GPU_LOCKS") or Path(tempfile.gettempdir()) / "lofi-lora-gpu-locks")


def pick_device(poll_s: float = 5.0) -> str:
    """"cpu", or "cuda:N" for a visible GPU that no other lofi-lora process holds.

    Each GPU has a lock file named by its UUID (flock: released by the kernel when the process ends, crash or not),
    so `dvc queue start -j N` on an N-GPU host runs one experiment per GPU; with more jobs than GPUs the extra ones
    wait for a free GPU. CUDA_VISIBLE_DEVICES still decides which GPUs are candidates.
    """
    global _claimed
    import torch

    if _claimed is not None:
        return _claimed[0]
    if not torch.cuda.is_available():
        return "cpu"
    n = torch.cuda.device_count()
    lock_dir = gpu_lock_dir()
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        probe = lock_dir / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:  # another user's lock folder, a read-only tmp: share GPU 0 as before, but say so
        log.warning("GPU locks unusable (%s: %s); set LOFI_LORA_GPU_LOCKS to a writable folder. Using cuda:0",
                    lock_dir, e)
        _claimed = ("cuda:0", None)
        return "cuda:0"
    waited = False
    while True:
        for i in range(n):
            uuid = str(getattr(torch.cuda.get_device_properties(i), "uuid", i))
            fh = open(lock_dir / f"gpu-{uuid}.lock", "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            torch.cuda.set_device(i)  # allocations that name no index land on the claimed GPU too
            _claimed = (f"cuda:{i}", fh)
            log.info("using cuda:%d (GPU %s; lock %s)", i, uuid, fh.name)
            return _claimed[0]
        if not waited:
            log.warning("all %d GPUs are held by other lofi-lora processes (%s); waiting for one", n, lock_dir)
            waited = True
        time.sleep(poll_s)


@dataclass(frozen=True)
class Placement:
    """Where a stage's model runs: the device, the dtype it computes in (autocast when not float32) and the dtype
    of its frozen weights."""

    device: Any            # torch.device
    compute_dtype: Any     # torch.dtype
    weights_dtype: Any     # torch.dtype


def placement(model_dtype: str, precision: str = "auto", device: Any = None,
              gpu_memory_gib: float | None = None) -> Placement:
    """The one device/dtype choice of every stage: `device` (default: a free GPU, else CPU), bf16 compute on CUDA
    and float32 on CPU unless `precision` says otherwise, weights in `model.dtype` except where compute is float32.
    On a GPU the stage is held to `gpu_memory_gib` (`runtime.gpu_memory_gib`, `cap_gpu_memory`).
    """
    import torch

    dev = torch.device(device if device is not None else pick_device())
    cap_gpu_memory(dev, gpu_memory_gib)
    compute = compute_dtype(precision, dev.type)
    weights = torch.float32 if compute == torch.float32 else getattr(torch, model_dtype)
    return Placement(dev, compute, weights)


def cap_gpu_memory(device: Any, gib: float | None) -> None:
    """Hold PyTorch's caching allocator on `device` to `gib` GiB: past it an allocation fails as on a card of that
    size, so a run capped on a large GPU shows what a smaller card fits. None: no cap."""
    import torch

    if gib is None or torch.device(device).type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    if gib * GIB > total:
        raise ConfigError(f"`runtime.gpu_memory_gib` = {gib}: more than {device}'s {total / GIB:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(gib * GIB / total, device)
    log.info("GPU memory capped at %.1f GiB of %s's %.1f GiB (runtime.gpu_memory_gib)", gib, device, total / GIB)


def gpu_budget_bytes(device: Any, gib: float | None) -> int | None:
    """The bytes a stage may reserve on `device`: the cap, else the whole card; None on a CPU."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    return int(gib * GIB) if gib is not None else torch.cuda.get_device_properties(device).total_memory


def compute_dtype(precision: str, device: str):
    """bf16 autocast on CUDA, fp32 on CPU, unless the config says otherwise."""
    import torch

    if precision == "fp32" or (precision == "auto" and device != "cuda"):
        return torch.float32
    return torch.bfloat16


def limit_cpu_threads(device: str, threads: int | None) -> None:
    """torch's CPU threads for a stage of toy-sized matmuls: one is fastest, and with other work on the cores (a
    second xdist worker, a queued experiment) torch's default of one per core ran evaluate 1.7x slower
    (benchmarks/NOTES.md). None keeps torch's default; nothing changes on a GPU."""
    import torch

    if device == "cpu" and threads:
        torch.set_num_threads(int(threads))


def set_deterministic(device: str) -> None:
    """Bitwise-reproducible CPU runs (exact resume is tested on CPU)."""
    import torch

    if device == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
