"""What a model variant means: the one table that evaluate, train, export and the tiny/native builders read.

Per ACE-Step 1.5 variant: turbo or not (guidance-distilled: few steps, no CFG), its native sampling (steps, shift,
CFG scale), and what `train.timesteps=auto` and `train.cfg_dropout=auto` pick for it (`lofi_lora.train.objective`).
A model's `conf/model/*.yaml` `sampling:` overrides single sampling values (null: these).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from lofi_lora.core.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    turbo: bool             # guidance-distilled: sampled and trained without CFG
    steps: int              # native num_inference_steps
    shift: float            # native timestep shift
    guidance_scale: float   # native CFG scale (1.0: no CFG)
    train_timesteps: str    # train.timesteps=auto
    cfg_dropout: float      # train.cfg_dropout=auto (upstream's model forward drops 15% for base/sft)


TABLE: dict[str, Variant] = {
    "turbo": Variant(turbo=True, steps=8, shift=3.0, guidance_scale=1.0, train_timesteps="discrete_turbo", cfg_dropout=0.0),
    "sft": Variant(turbo=False, steps=50, shift=1.0, guidance_scale=7.0, train_timesteps="logit_normal", cfg_dropout=0.15),
    "base": Variant(turbo=False, steps=50, shift=1.0, guidance_scale=7.0, train_timesteps="logit_normal", cfg_dropout=0.15),
}
VARIANTS = tuple(TABLE)


def variant(name: str) -> Variant:
    """The row of `name`; a ConfigError naming `model.variant` for an unknown one."""
    if name not in TABLE:
        raise ConfigError(f"`model.variant` = {name!r}: expected one of {', '.join(VARIANTS)}")
    return TABLE[name]


def sampling_settings(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """`AceStepPipeline` sampling arguments of variant `name`, with a model config's `sampling:` overrides."""
    v = variant(name)
    return {"num_inference_steps": v.steps, "shift": v.shift, "guidance_scale": v.guidance_scale, **(overrides or {})}
