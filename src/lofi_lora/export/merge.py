"""Fold a LoRA adapter into the transformer's weights, and prove the merged model still computes the same thing."""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from lofi_lora.core.errors import ModelError
from lofi_lora.export import parity

log = logging.getLogger(__name__)


def count_lora_layers(model: torch.nn.Module) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in model.modules())


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Merge every LoRA layer into its base weight and drop the adapter modules (in place for diffusers models).

    A `peft.PeftModel` goes through `merge_and_unload`; a diffusers model with an injected adapter
    (`load_lora_weights` / `add_adapter`) through its own `fuse_lora` + `unload_lora`, which is what
    `AceStepPipeline.fuse_lora` does for the transformer.
    """
    from peft import PeftModel

    n = count_lora_layers(model)
    if n == 0:
        raise ModelError("merge_lora: the transformer carries no LoRA layers; was the adapter loaded?")
    if isinstance(model, PeftModel):
        merged = model.merge_and_unload(safe_merge=True)
    elif hasattr(model, "fuse_lora") and hasattr(model, "unload_lora"):
        model.fuse_lora(lora_scale=1.0, safe_fusing=True)
        model.unload_lora()
        merged = model
    else:
        raise ModelError(f"merge_lora: do not know how to merge an adapter into {type(model).__name__}")
    left = count_lora_layers(merged)
    if left:
        raise ModelError(f"merge_lora: {left} LoRA layers left after merging")
    log.info("merged %d LoRA layers into %s", n, type(merged).__name__)
    return merged


def merge_and_verify(
    model: torch.nn.Module,
    run: Callable[[torch.nn.Module, Mapping[str, np.ndarray]], np.ndarray],
    cases: Sequence[Mapping[str, np.ndarray]],
    tolerance: Mapping[str, float | None],
) -> tuple[torch.nn.Module, dict]:
    """Merge, then compare the merged model with the adapter model on `cases`; ExportParityError if it differs.

    Returns the merged model and the worst parity figures over the cases.
    """
    before = [run(model, c) for c in cases]
    merged = merge_lora(model)
    figures = {f"case{i}": parity.compare(ref, run(merged, c)) for i, (ref, c) in enumerate(zip(before, cases))}
    worst = parity.worst(figures)
    parity.check("merge (merged vs adapter model)", worst, tolerance)
    return merged, worst
