"""Which ACE-Step 1.5 variant (turbo, base, sft) a folder of weights holds, checked against `model.variant`.

The evidence, strongest first: the transformer config's `is_turbo` (turbo weights are guidance-distilled, and the
sampling settings follow from it), the folder name upstream publishes each variant under (`acestep-v15[-xl]-<variant>`,
also inside the converted `<variant dir>-<hash>` cache folder), and the user's `model=` choice (`model.variant`).
`model_version` is not evidence: upstream's config class defaults it to "turbo", so a base or sft `config.json` may
carry "turbo" there. A disagreement of `model_version` is a warning; a disagreement of `is_turbo` or the folder name
stops the stage.
"""
from __future__ import annotations

import re
from pathlib import Path

from lofi_lora.errors import ModelError

VARIANTS = ("turbo", "sft", "base")
UPSTREAM_DEFAULT_VERSION = "turbo"  # upstream's AceStepConfig(model_version="turbo")
_FOLDER = re.compile(r"acestep-v15(?:-xl)?-(turbo|base|sft)(?:-[0-9a-f]{16})?")


def folder_variant(folder: str | Path) -> str | None:
    """The variant an upstream folder name states (acestep-v15-xl-sft, acestep-v15-base-<hash>), else None."""
    m = _FOLDER.fullmatch(Path(folder).name)
    return m.group(1) if m else None


def check_variant(variant: str, transformer_config: dict, folder: str | Path) -> list[str]:
    """Warnings about fields that disagree with `variant` but prove nothing; ModelError where real evidence does."""
    version, turbo = transformer_config.get("model_version"), transformer_config.get("is_turbo")
    named = folder_variant(folder)
    said = f"{folder}/transformer/config.json says model_version={version!r}, is_turbo={turbo!r}"
    if turbo is not None and bool(turbo) != (variant == "turbo"):
        raise ModelError(f"`model.variant` = {variant!r} but {said}: the weights are "
                         f"{'' if turbo else 'not '}turbo (pick the matching `model=`)")
    if named is not None and named != variant:
        raise ModelError(f"`model.variant` = {variant!r} but the folder {Path(folder).name} is upstream's "
                         f"{named!r} checkpoint (pick the matching `model=`)")
    if version in VARIANTS and version != variant:
        default = " (upstream's default for that field)" if version == UPSTREAM_DEFAULT_VERSION else ""
        basis = ", ".join(b for b in (f"is_turbo={turbo!r}" if turbo is not None else "",
                                      f"the folder name {named!r}" if named else "") if b) or "nothing else"
        return [f"{said}{default}; taking `model.variant` = {variant!r} (agreeing evidence: {basis})"]
    return []
