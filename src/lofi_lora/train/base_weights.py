"""The frozen base DiT's block weights in lower precision (`train.base_weights`), the adapter in full precision on top:
int8 weight-only or FP8 (dynamic activation scaling, FP8 GEMMs on Ada/Hopper) through torchao, with PEFT's torchao
LoRA layers. The embedders and the input/output projections stay as loaded (a small share of the weights, and the
most sensitive: benchmarks/NOTES.md, INT4). Evaluate and export use the base as loaded, as QLoRA-style trainers do."""
from __future__ import annotations

import logging
import warnings

import torch

from lofi_lora.core.errors import ConfigError

log = logging.getLogger(__name__)
KINDS = ("native", "int8", "fp8")


def check(kind: str, adapter_type: str, device: torch.device) -> None:
    """Refuse what cannot run before the model loads: DoRA needs the base weight itself, FP8 an FP8 GPU."""
    if kind == "native":
        return
    if adapter_type == "dora":
        raise ConfigError(f"`train.base_weights` = {kind}: DoRA normalises by the base weight, which PEFT cannot "
                          "read from a quantized layer; use adapter=lora or lokr, or base_weights=native")
    if kind == "fp8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        raise ConfigError("`train.base_weights` = fp8 needs a CUDA GPU with FP8 GEMMs (compute capability 8.9+: "
                          "Ada, Hopper); use int8")


def quantize_blocks(model: torch.nn.Module, kind: str) -> int:
    """Quantize every Linear inside the DiT's blocks (`layers.*`) in place; returns how many."""
    if kind == "native":
        return 0
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, quantize_

    names: list[str] = []

    def pick(module: torch.nn.Module, fqn: str) -> bool:
        hit = isinstance(module, torch.nn.Linear) and fqn.startswith("layers.")
        if hit:
            names.append(fqn)
        return hit

    config = Int8WeightOnlyConfig(version=2) if kind == "int8" else Float8DynamicActivationFloat8WeightConfig()
    quantize_(model, config, filter_fn=pick)
    # PEFT warns that its torchao LoRA layers cannot merge: training never merges, export merges on the base it loads
    warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without")
    log.info("base weights: %d Linear layers of the DiT blocks in %s (train.base_weights)", len(names), kind)
    return len(names)
