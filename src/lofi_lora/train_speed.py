"""Speed knobs of the train step that do not change what it computes: regional torch.compile of the DiT blocks and
selective activation checkpointing (a chosen share of the blocks instead of all or none).

Why these: the plain LoRA loop on the 1.5 DiT is bound by per-kernel launch overhead (peft + autocast + 24 blocks),
so its step time hardly grows with clip length; compiling the repeated block fuses the elementwise work and removes
most launches, and checkpointing only some blocks trades a little recompute for the memory that bigger batches need.
benchmarks/train_step.py measures both against the plain loop (benchmarks/NOTES.md).
"""
from __future__ import annotations

import logging

import torch

from lofi_lora.errors import ConfigError

log = logging.getLogger(__name__)


def checkpoint_share(value) -> float:
    """`train.grad_checkpointing` as the share of DiT blocks to recompute: false=0, true=1, or a float in [0, 1]."""
    if value is None or value is False:
        return 0.0
    if value is True:
        return 1.0
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"train.grad_checkpointing={value!r}: expected true, false or a share in [0, 1]") from None
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"train.grad_checkpointing={value!r}: expected true, false or a share in [0, 1]")
    return share


def enable_selective_checkpointing(model: torch.nn.Module, share: float) -> int:
    """Recompute the activations of the first round(share * n) DiT blocks in backward; returns how many.

    The diffusers model calls `self._gradient_checkpointing_func(block, *args)` for every block when checkpointing
    is on; we replace that function with one that checkpoints only the chosen blocks and runs the rest plainly.
    """
    from torch.utils.checkpoint import checkpoint

    blocks = list(getattr(model, "layers", []))
    n = round(share * len(blocks))
    if n == 0:
        model.disable_gradient_checkpointing() if hasattr(model, "disable_gradient_checkpointing") else None
        return 0
    model.enable_gradient_checkpointing()
    chosen = {id(b) for b in blocks[:n]}

    def run_block(block, *args):
        if id(block) in chosen:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    model._gradient_checkpointing_func = run_block
    return n


def compile_blocks(model: torch.nn.Module, mode: str | None = None, backend: str = "inductor") -> int:
    """torch.compile each DiT block in place (regional compilation: one graph, reused by all identical blocks)."""
    blocks = list(getattr(model, "layers", []))
    if not blocks:
        raise ConfigError("train.compile: the model has no `layers` to compile")
    for block in blocks:
        block.compile(mode=mode, backend=backend)  # dynamic=None: a second clip length marks the length dynamic, no recompile storm
    log.info("compiled %d DiT blocks (mode %s)", len(blocks), mode or "default")
    return len(blocks)
