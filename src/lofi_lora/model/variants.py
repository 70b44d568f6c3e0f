"""What a model variant means: the one table of native sampling settings that evaluate reads.

`conf/model/*.yaml`'s `sampling:` overrides single values for one model (null: these). Turbo is guidance-distilled:
no CFG, few steps.
"""
from __future__ import annotations

from lofi_lora.core.errors import ConfigError

VARIANTS = ("turbo", "sft", "base")
SAMPLING: dict[str, dict[str, float]] = {
    "turbo": {"num_inference_steps": 8, "shift": 3.0, "guidance_scale": 1.0},
    "base": {"num_inference_steps": 50, "shift": 1.0, "guidance_scale": 7.0},
    "sft": {"num_inference_steps": 50, "shift": 1.0, "guidance_scale": 7.0},
}


def sampling_settings(variant: str) -> dict[str, float]:
    """The native sampling settings of `variant`; a ConfigError naming `model.variant` for an unknown one."""
    if variant not in SAMPLING:
        raise ConfigError(f"`model.variant` = {variant!r}: no sampling settings (expected one of {sorted(SAMPLING)})")
    return dict(SAMPLING[variant])
