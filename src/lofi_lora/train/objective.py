"""The flow-matching objective that training minimises and validation reports: one loss, two callers.

As upstream ACE-Step 1.5 trains (`acestep/training/trainer.py`, `PreprocessedLoRAModule.training_step`, and the
model's own training forward as Side-Step's "fixed" mode reimplements it):
    x0 = data latents, x1 = noise, x_t = t*x1 + (1-t)*x0, target velocity v = x1 - x0,
    prediction = DiT(hidden_states=x_t, timestep=t, timestep_r=t, encoder_hidden_states, context_latents).
Timesteps (`train.timesteps=auto` picks per `model.variant`): turbo -> uniform over upstream's 8 discrete shift-3
turbo timesteps (the values turbo inference visits); base/sft -> logit-normal, t = sigmoid(N(logit_mean,
logit_std)) (the model's own `sample_t_r` with r = t). Condition dropout (`train.cfg_dropout`; `auto` = 0.15 for
base/sft as in the model's forward, 0 for turbo, which upstream trains and samples without CFG): per clip,
encoder_hidden_states -> null_condition_emb.

Masking (our choice): upstream's decoder accepts attention masks but discards them, and diffusers'
`AceStepTransformer1DModel` takes none, so padding is visible to attention in both. The squared error is averaged
only over valid latent frames (`attention_mask`), where upstream's plain MSE also trains the velocity of padded
frames. With batch size 1 and unpadded clips the two are equal.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch

from lofi_lora.core.errors import ModelError
from lofi_lora.model.variants import variant as variant_row

# Upstream's turbo inference schedule (8 steps, shift 3): t_i = 3s/(1+2s) for s = 1, 7/8, ..., 1/8.
TURBO_SHIFT3_TIMESTEPS = tuple(3 * s / (1 + 2 * s) for s in (8 / 8, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8))


def timestep_scheme(setting: str, variant: str, model_scheme: str | None = None) -> str:
    """`train.timesteps` with `auto` resolved: the model config's `train_timesteps`, else what the variant implies."""
    if setting == "auto":
        return model_scheme or variant_row(variant).train_timesteps
    return setting


def cfg_dropout_ratio(setting: str | float, variant: str) -> float:
    """`train.cfg_dropout` with `auto` resolved for the model variant."""
    if setting == "auto":
        return variant_row(variant).cfg_dropout
    return float(setting)


@functools.lru_cache(maxsize=None)
def _turbo_table(device: torch.device) -> torch.Tensor:
    """The turbo timesteps on `device`, made once: a host-to-GPU copy from a Python list waits for the GPU queue to
    drain, and once per step it kept the host from queueing the next step."""
    return torch.tensor(TURBO_SHIFT3_TIMESTEPS, dtype=torch.float32, device=device)


def sample_timesteps(scheme: str, n: int, gen: torch.Generator, device: torch.device,
                     logit_mean: float = -0.4, logit_std: float = 1.0) -> torch.Tensor:
    if scheme == "discrete_turbo":
        table = _turbo_table(torch.device(device))
        return table[torch.randint(0, len(table), (n,), generator=gen, device=device)]
    if scheme == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=gen, device=device) * logit_std + logit_mean)
    return torch.rand(n, generator=gen, device=device)


def flow_matching_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], t: torch.Tensor, noise: torch.Tensor,
                       autocast: contextlib.AbstractContextManager | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked velocity MSE of `model` on `batch` at timesteps `t` [B] with `noise` shaped like the latents.

    Returns (loss, number of valid latent frames), both still on the device (no host sync).
    """
    x0 = batch["target_latents"]
    t_ = t.view(-1, 1, 1)
    xt = t_ * noise + (1.0 - t_) * x0
    with autocast or contextlib.nullcontext():
        pred = model(hidden_states=xt, timestep=t, timestep_r=t, encoder_hidden_states=batch["encoder_hidden_states"],
                     context_latents=batch["context_latents"], return_dict=False)[0]
    mask = batch["attention_mask"].to(torch.float32).unsqueeze(-1)
    sq = (pred.float() - (noise - x0).float()).pow(2) * mask
    frames = mask.sum()
    return sq.sum() / (frames * x0.shape[-1]).clamp(min=1.0), frames


@dataclass
class Objective:
    """How training draws what the loss is given: condition dropout, timesteps and noise, from one generator."""

    scheme: str
    logit_mean: float
    logit_std: float
    cfg_ratio: float = 0.0
    null_condition: torch.Tensor | None = None
    autocast: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of one training batch; draws dropout, then timesteps, then noise (the order is the RNG state)."""
        x0 = batch["target_latents"]
        device, bsz = x0.device, x0.shape[0]
        if self.cfg_ratio > 0:
            if self.null_condition is None:
                raise ModelError("train.cfg_dropout > 0 but the base model has no null_condition_emb")
            cond = batch["encoder_hidden_states"]
            drop = torch.rand(bsz, generator=gen, device=device) < self.cfg_ratio
            nulled = torch.where(drop.view(-1, 1, 1), self.null_condition.to(cond).expand_as(cond), cond)
            batch = {**batch, "encoder_hidden_states": nulled}
        t = sample_timesteps(self.scheme, bsz, gen, device, self.logit_mean, self.logit_std)
        noise = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
        return flow_matching_loss(model, batch, t, noise, self.autocast)
