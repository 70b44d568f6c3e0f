"""Speed knobs of the train step that do not change what it computes: regional torch.compile of the DiT blocks and
selective activation checkpointing (a chosen share of the blocks instead of all or none).

Why these: the plain LoRA loop on the 1.5 DiT is bound by per-kernel launch overhead (peft + autocast + 24 blocks),
so its step time hardly grows with clip length; compiling the repeated block fuses the elementwise work and removes
most launches, and checkpointing only some blocks trades a little recompute for the memory that bigger batches need.
benchmarks/train_step.py measures both against the plain loop (benchmarks/NOTES.md).
"""
from __future__ import annotations

import logging
from typing import Any

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


class BandFlexAttnProcessor:
    """Self-attention of the DiT's sliding-window layers through flex_attention with a block-sparse band mask.

    The diffusers model gives these layers a dense [1, 1, S, S] additive mask (keep |i - j| <= window); SDPA then
    takes a dense kernel and computes all S x S scores (with GQA and a mask, the math path). The band keeps the
    same pairs, so the result is the same attention, computed only on the ~(2w+1)/S of blocks that hold any kept
    pair. Needs torch.compile (flex_attention is a compiled kernel); the model's dense mask is ignored here.
    """

    def __init__(self, window: int):
        self.window = int(window)
        self.block_mask = None
        self._masks: dict[tuple[int, str], Any] = {}

    def prepare(self, seq_len: int, device: torch.device) -> None:
        """Pick (build once per length) the band mask of this sequence length; runs outside the compiled blocks."""
        from torch.nn.attention.flex_attention import create_block_mask

        key = (int(seq_len), str(device))
        if key not in self._masks:
            w = self.window

            def band(b, h, q, kv):
                return (q - kv).abs() <= w
            self._masks[key] = create_block_mask(band, None, None, seq_len, seq_len, device=str(device))
        self.block_mask = self._masks[key]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        from torch.nn.attention.flex_attention import flex_attention

        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (attn.heads, attn.head_dim)))
        k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (attn.kv_heads, attn.head_dim)))
        v = attn.to_v(hidden_states).unflatten(-1, (attn.kv_heads, attn.head_dim))
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, use_real=True, use_real_unbind_dim=-2, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, use_real=True, use_real_unbind_dim=-2, sequence_dim=1)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        if v.dtype != q.dtype:  # autocast leaves v (no norm/rope) in bf16 and q/k maybe fp32
            q, k = q.to(v.dtype), k.to(v.dtype)
        out = flex_attention(q, k, v, block_mask=self.block_mask, scale=attn.scaling,
                             enable_gqa=attn.heads != attn.kv_heads)
        out = out.transpose(1, 2).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out))


def use_band_attention(model: torch.nn.Module, force: bool = False) -> int:
    """Route the sliding-window self-attention layers through `BandFlexAttnProcessor`; returns how many.

    CUDA only (flex_attention has no CPU backward), unless `force` (forward-only checks on CPU)."""
    if not force and next(model.parameters()).device.type != "cuda":
        return 0
    layers = [b.self_attn for b in getattr(model, "layers", []) if getattr(b.self_attn, "sliding_window", None)]
    if not layers or any(float(getattr(a, "dropout", 0.0)) > 0 for a in layers):
        return 0
    proc = BandFlexAttnProcessor(layers[0].sliding_window)
    for a in layers:
        a.processor = proc
    patch = int(getattr(model.config, "patch_size", 1))

    def set_mask(module, args, kwargs):
        hs = kwargs.get("hidden_states", args[0] if args else None)
        proc.prepare(-(-hs.shape[1] // patch), hs.device)
    model.register_forward_pre_hook(set_mask, with_kwargs=True)
    return len(layers)
