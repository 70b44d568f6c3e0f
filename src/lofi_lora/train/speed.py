"""Speed knobs of the train step that do not change what it computes: torch.compile of the DiT (each block, or the
whole forward replayed as CUDA graphs), attention processors that keep the compiled graph whole (band
flex_attention for sliding-window layers, plain SDPA for the rest) and selective activation checkpointing.

Why these: the plain LoRA loop on the 1.5 DiT is bound by per-kernel launch overhead (peft + autocast + 24 blocks),
so its step time hardly grows with clip length. One graph per forward and backward, replayed as CUDA graphs, leaves
the GPU busy about 90% of the step. benchmarks/train_step.py measures each knob against the plain loop
(benchmarks/NOTES.md).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from lofi_lora.core.errors import ConfigError

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


COMPILE_SCOPES = ("block", "model")
MAX_SHAPES = 64  # compiled batch shapes before dynamo falls back to eager (train.pad_multiple keeps them fewer)


def compile_scope(value) -> str | None:
    """`train.compile` as a scope: false/null -> None, true -> "block", or "block" | "model"."""
    if value is None or value is False:
        return None
    if value is True:
        return "block"
    if value not in COMPILE_SCOPES:
        raise ConfigError(f"train.compile={value!r}: expected false, true, block or model")
    return value


def uses_cudagraphs(mode: str | None) -> bool:
    return bool(mode) and "reduce-overhead" in mode


def compile_model(model: torch.nn.Module, scope: str, mode: str | None = None, backend: str = "inductor",
                  memory_budget: float | None = None) -> None:
    """Compile the DiT for training: per block ("block") or the whole forward as one graph ("model").

    "model" gives inductor the whole forward and backward, so with mode "reduce-overhead" each is one CUDA graph
    replay instead of thousands of launches (the short-clip step is launch-bound); the module's hooks (band mask)
    stay eager. `memory_budget` (0..1, share of the activations a no-recompute backward would keep) lets the
    min-cut partitioner recompute cheap ops instead of saving them: selective checkpointing inside the graph.
    """
    if memory_budget is not None:
        budget = float(memory_budget)
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"train.activation_memory_budget={memory_budget!r}: expected a share in (0, 1]")
        import torch._functorch.config as functorch_config
        functorch_config.activation_memory_budget = budget
    if scope == "block":
        compile_blocks(model, mode, backend)
        return
    # Static shapes: each distinct batch shape compiles once (and records its CUDA graph). The dynamic-shape
    # recompile fails in inductor on this forward (torch 2.13, CPU: "cannot determine truth value of Relational:
    # 1 < 8*((s50//2))", from the patchified length), so `train.pad_multiple` keeps the shapes few instead, and
    # the recompile limit is raised so that a new shape is compiled rather than run eagerly.
    import torch._dynamo.config as dynamo_config
    dynamo_config.recompile_limit = max(int(dynamo_config.recompile_limit), MAX_SHAPES)
    model.forward = torch.compile(model.forward, mode=mode, backend=backend, dynamic=False)
    log.info("compiled the whole DiT forward (mode %s, activation memory budget %s)", mode or "default",
             memory_budget if memory_budget is not None else "none")


def step_begin(mode: str | None) -> None:
    """Tell CUDA graph trees a new train step starts (outputs of the last one may be overwritten)."""
    if uses_cudagraphs(mode):
        torch.compiler.cudagraph_mark_step_begin()


def _qkv(attn, hidden_states, kv_states, rotary):
    """Projections, q/k RMSNorm and RoPE exactly as diffusers' AceStepAttnProcessor2_0, in (B, H, L, D) layout."""
    from diffusers.models.embeddings import apply_rotary_emb

    q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (attn.heads, attn.head_dim)))
    k = attn.norm_k(attn.to_k(kv_states).unflatten(-1, (attn.kv_heads, attn.head_dim)))
    v = attn.to_v(kv_states).unflatten(-1, (attn.kv_heads, attn.head_dim))
    if rotary is not None:
        q = apply_rotary_emb(q, rotary, use_real=True, use_real_unbind_dim=-2, sequence_dim=1)
        k = apply_rotary_emb(k, rotary, use_real=True, use_real_unbind_dim=-2, sequence_dim=1)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    if v.dtype != q.dtype:  # autocast leaves v (no norm/rope) in bf16 and q/k maybe fp32; SDPA's autocast does this
        q, k = q.to(v.dtype), k.to(v.dtype)
    return q, k, v


def _out(attn, out):
    return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2, 3)))


class SdpaAttnProcessor:
    """Full self-attention and cross-attention straight through F.scaled_dot_product_attention.

    The same math as diffusers' processor with its native backend, minus the backend dispatch: torch 2.11's dynamo
    breaks the graph on the dispatcher's `AttentionBackendName(...)` (seen on the GPU machine), which split every
    compiled block and kept the whole forward from becoming one CUDA graph.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        is_cross = attn.is_cross_attention and encoder_hidden_states is not None
        q, k, v = _qkv(attn, hidden_states, encoder_hidden_states if is_cross else hidden_states,
                       None if is_cross else image_rotary_emb)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask, dropout_p=attn.dropout if attn.training else 0.0,
            scale=attn.scaling, enable_gqa=attn.heads != attn.kv_heads)
        return _out(attn, out)


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
        from torch.nn.attention.flex_attention import flex_attention

        q, k, v = _qkv(attn, hidden_states, hidden_states, image_rotary_emb)
        out = flex_attention(q, k, v, block_mask=self.block_mask, scale=attn.scaling,
                             enable_gqa=attn.heads != attn.kv_heads)
        return _out(attn, out)


def use_fast_attention(model: torch.nn.Module, force_band: bool = False) -> dict[str, int]:
    """Attention processors for the compiled train step; returns how many layers got each.

    Sliding-window self-attention goes through `BandFlexAttnProcessor` (CUDA and head_dim >= 16 only:
    flex_attention has no CPU backward, unless `force_band` for forward-only checks); every other attention (full
    self, cross) goes through `SdpaAttnProcessor`. Attention with dropout is left to diffusers (flex has no dropout)."""
    layers = [a for b in getattr(model, "layers", []) for a in (b.self_attn, getattr(b, "cross_attn", None)) if a]
    if any(float(getattr(a, "dropout", 0.0)) > 0 for a in layers):
        return {"band": 0, "sdpa": 0}
    sliding = [a for a in layers if not a.is_cross_attention and getattr(a, "sliding_window", None)]
    on_cuda = next(model.parameters()).device.type == "cuda"
    # flex_attention's Triton kernel needs head_dim >= 16 (tl.dot): a toy model keeps diffusers' dense sliding mask
    flex_ok = on_cuda and all(int(getattr(a, "head_dim", 0)) >= 16 for a in sliding)
    band = sliding if (flex_ok or force_band) else []
    sdpa = SdpaAttnProcessor()
    for a in layers:
        if a not in band:
            a.processor = sdpa
    if band:
        proc = BandFlexAttnProcessor(band[0].sliding_window)
        for a in band:
            a.processor = proc
        patch = int(getattr(model.config, "patch_size", 1))

        def set_mask(module, args, kwargs):
            hs = kwargs.get("hidden_states", args[0] if args else None)
            proc.prepare(-(-hs.shape[1] // patch), hs.device)
        model.register_forward_pre_hook(set_mask, with_kwargs=True)
    return {"band": len(band), "sdpa": len(layers) - len(band)}
