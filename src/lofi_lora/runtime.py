"""Process-wide set-up: seeds, device and dtype choice."""
from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # stages that never touch torch
        pass


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(precision: str, device: str):
    """bf16 autocast on CUDA, fp32 on CPU, unless the config says otherwise."""
    import torch

    if precision == "fp32" or (precision == "auto" and device != "cuda"):
        return torch.float32
    return torch.bfloat16


def set_deterministic(device: str) -> None:
    """Bitwise-reproducible CPU runs (exact resume is tested on CPU)."""
    import torch

    if device == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
