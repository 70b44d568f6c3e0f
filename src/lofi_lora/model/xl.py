"""ACE-Step 1.5 XL condition encoder: diffusers' class plus the timbre CLS token upstream's XL code prepends.

Upstream's XL modelling files (`acestep/models/xl_*/modeling_acestep_v15_xl_*.py`) prepend the timbre encoder's
learned `special_token` to the reference-audio frames and pool the output at that token; the 2B files have the line
commented out, and diffusers 0.42.1 follows the 2B files for every size. Without the token an XL checkpoint's timbre
embedding is computed from the wrong position (benchmarks/NOTES.md, "Native checkpoints"). This subclass adds the
token with a forward hook on `timbre_encoder.embed_tokens`: weights, key names, config and every other computation
stay diffusers'. Native XL conversions name it in `model_index.json`; importing this module (lofi_lora.model.load does)
lets `AceStepPipeline.from_pretrained` resolve it.
"""
from __future__ import annotations

import functools

import torch
from diffusers import AceStepConditionEncoder, ModelMixin

# diffusers looks up the loader base classes (ModelMixin, ...) in the namespace of the module model_index.json names.
__all__ = ["AceStepXLConditionEncoder", "ModelMixin"]


class AceStepXLConditionEncoder(AceStepConditionEncoder):
    """`AceStepConditionEncoder` whose timbre encoder sees `[special_token, frames...]`, as upstream's XL model."""

    @functools.wraps(AceStepConditionEncoder.__init__)  # keeps the signature diffusers reads the config keys from
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timbre_encoder.embed_tokens.register_forward_hook(self._prepend_cls_token)

    def _prepend_cls_token(self, module, args, output: torch.Tensor) -> torch.Tensor:
        token = self.timbre_encoder.special_token.to(dtype=output.dtype)
        return torch.cat([token.expand(output.shape[0], 1, -1), output], dim=1)


def stock_xl_warning(folder) -> str | None:
    """A warning when a diffusers-format folder holds an XL DiT but diffusers' stock condition encoder (no CLS token)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    try:
        tr = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    xl = tr.get("encoder_hidden_size") not in (None, tr.get("hidden_size"))
    if xl and (index.get("condition_encoder") or [None, None])[1] != AceStepXLConditionEncoder.__name__:
        return (f"{folder}: an XL pipeline with diffusers' own AceStepConditionEncoder, which omits upstream XL's "
                "timbre CLS token (its conditions differ from upstream's, benchmarks/NOTES.md); convert upstream's "
                "native XL checkpoint with model.source=native instead")
    return None

