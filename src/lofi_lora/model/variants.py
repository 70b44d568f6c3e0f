"""What a model variant means: the one table that evaluate, train, export and the tiny/native builders read.

Per ACE-Step 1.5 variant: turbo or not (guidance-distilled: few steps, no CFG), its native sampling (steps, shift,
CFG scale), and what `train.timesteps=auto` and `train.cfg_dropout=auto` pick for it (`lofi_lora.train.objective`).
A model's `conf/model/*.yaml` `sampling:` overrides single sampling values (null: these).

Which variant a folder of weights holds is decided here too (`check_weights_variant`), from the evidence, strongest
first: the transformer config's `is_turbo`, the folder name upstream publishes each variant under
(`acestep-v15[-xl]-<variant>`, also inside the converted `<variant>-<hash>` cache folder), and the user's `model=`
choice. `model_version` is not evidence: upstream's config class defaults it to "turbo", so a base or sft
`config.json` may carry "turbo" there; a disagreement there only warns.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lofi_lora.core.errors import ConfigError, ModelError


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


UPSTREAM_DEFAULT_VERSION = "turbo"  # upstream's AceStepConfig(model_version="turbo")
_FOLDER = re.compile(r"acestep-v15(?:-xl)?-(turbo|base|sft)(?:-[0-9a-f]{16})?")


def folder_variant(folder: str | Path) -> str | None:
    """The variant an upstream folder name states (acestep-v15-xl-sft, acestep-v15-base-<hash>), else None."""
    m = _FOLDER.fullmatch(Path(folder).name)
    return m.group(1) if m else None


def check_weights_variant(name: str, transformer_config: Mapping[str, Any], folder: str | Path) -> list[str]:
    """Warnings about fields that disagree with variant `name` but prove nothing; ModelError where evidence does."""
    version, turbo = transformer_config.get("model_version"), transformer_config.get("is_turbo")
    named = folder_variant(folder)
    said = f"{folder}/transformer/config.json says model_version={version!r}, is_turbo={turbo!r}"
    if turbo is not None and bool(turbo) != variant(name).turbo:
        raise ModelError(f"`model.variant` = {name!r} but {said}: the weights are "
                         f"{'' if turbo else 'not '}turbo (pick the matching `model=`)")
    if named is not None and named != name:
        raise ModelError(f"`model.variant` = {name!r} but the folder {Path(folder).name} is upstream's "
                         f"{named!r} checkpoint (pick the matching `model=`)")
    if version in TABLE and version != name:
        default = " (upstream's default for that field)" if version == UPSTREAM_DEFAULT_VERSION else ""
        basis = ", ".join(b for b in (f"is_turbo={turbo!r}" if turbo is not None else "",
                                      f"the folder name {named!r}" if named else "") if b) or "nothing else"
        return [f"{said}{default}; taking `model.variant` = {name!r} (agreeing evidence: {basis})"]
    return []
