"""LoRA adapters: PEFT injection into the DiT, the diffusers file `AceStepPipeline.load_lora_weights` reads, and
upstream 1.5's PEFT folder. All peft calls of training live here (diffusers model calls live in `backend`).

Why three formats: diffusers names the DiT's attention projections `to_q/to_k/to_v/to_out.0`, upstream ACE-Step 1.5
names them `q_proj/k_proj/v_proj/o_proj` under `base_model.model.` (PEFT on `model.decoder`), and ComfyUI reads
upstream's names plus one `<module>.alpha` tensor per layer (`save_comfyui_adapter`).

Strength (the half-strength bug, shared/notes/ace-step.md §0.2): a LoRA's effect is `scale * B @ A` with
`scale = alpha / r` (or `alpha / sqrt(r)` with rsLoRA). diffusers 0.42.1 restores alpha/rsLoRA only from the
`lora_adapter_metadata` header and only on its own loader; ComfyUI and older loaders read no metadata and apply
scale 1.0. The diffusers file therefore carries the scale *baked into lora_B* (and `lora_alpha = r`,
`use_rslora = false` in its metadata), so every loader gets the trained strength; the header key `lofi_lora` records
the trained r/alpha/rsLoRA and the baked factor. The PEFT folder keeps the trained r/alpha/rsLoRA as they are,
because upstream's `PeftModel.from_pretrained` reads `adapter_config.json`.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from lofi_lora.core.errors import ModelError
from lofi_lora.core.schema import LORA_TARGETS
from lofi_lora.core.fsutil import atomic_dir, atomic_write_json, safetensors_bytes, save_safetensors

log = logging.getLogger(__name__)

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
INFO_KEY = "lofi_lora"
ADAPTER_NAME = "default"

# diffusers module name -> upstream ACE-Step 1.5 module name (inverse of diffusers'
# `_convert_non_diffusers_ace_step_lora_to_diffusers`).
_TO_UPSTREAM = {k: v for k, v in LORA_TARGETS.items() if k != v}  # attention; the mlp *_proj keep their names
_KEY_RE = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


def lora_scale(r: int, alpha: float, rslora: bool) -> float:
    """PEFT's scaling factor: alpha/sqrt(r) with rsLoRA, else alpha/r."""
    return float(alpha) / (math.sqrt(r) if rslora else r)


def lora_config_dict(r: int, alpha: float, rslora: bool, dropout: float, target_modules: list[str]) -> dict[str, Any]:
    """A complete PEFT LoraConfig as a JSON-able dict (what PEFT itself writes)."""
    from peft import LoraConfig

    cfg = LoraConfig(r=int(r), lora_alpha=alpha, use_rslora=bool(rslora), lora_dropout=float(dropout),
                     target_modules=list(target_modules), init_lora_weights=True)
    out = cfg.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in out.items()}


def inject_lora(model: torch.nn.Module, *, r: int, alpha: float, rslora: bool, dropout: float,
                target_modules: list[str]) -> int:
    """Add a PEFT LoRA to a diffusers model, freeze everything else, keep the LoRA params in fp32 (also under a
    bf16 base); returns the number of trainable parameters."""
    from peft import LoraConfig

    config = LoraConfig(r=int(r), lora_alpha=alpha, use_rslora=bool(rslora), lora_dropout=float(dropout),
                        target_modules=list(target_modules), init_lora_weights=True)
    model.add_adapter(config, adapter_name=ADAPTER_NAME)
    n = 0
    for name, p in model.named_parameters():
        is_lora = ".lora_" in name
        p.requires_grad_(is_lora)
        if is_lora:
            p.data = p.data.float()
            n += p.numel()
    return n


def adapter_state_dict(model: torch.nn.Module, adapter_name: str = ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """LoRA tensors of `model` with diffusers module names (`layers.0.self_attn.to_q.lora_A.weight`), fp32, CPU."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(model, adapter_name=adapter_name)
    if not sd:
        raise ModelError(f"model has no LoRA adapter named {adapter_name!r}")
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(sd.items())}


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    save_safetensors(path, tensors, metadata)


def save_diffusers_adapter(state: Mapping[str, torch.Tensor], out_dir: str | Path, *, r: int, alpha: float,
                           rslora: bool, dropout: float, target_modules: list[str], bake: bool = True,
                           extra_info: Mapping[str, Any] | None = None) -> Path:
    """Write `out_dir/pytorch_lora_weights.safetensors` for `AceStepPipeline.load_lora_weights`, full strength.

    `state` has diffusers module names without prefix (from `adapter_state_dict`); it is not modified.
    `bake=True` (final/, best/): scale folded into lora_B, right in any loader. `bake=False` (checkpoints): the
    exact training tensors (bitwise resume) with r/alpha/rsLoRA in the metadata, which diffusers >= 0.42 applies.
    """
    out_dir = Path(out_dir)
    scale = lora_scale(r, alpha, rslora) if bake else 1.0
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _KEY_RE.match(key)
        if not m:
            raise ModelError(f"unexpected LoRA key {key!r} (expected <module>.lora_A|lora_B.weight)")
        v = value.detach().to("cpu", torch.float32)
        if m["ab"] == "lora_B":
            v = v * scale  # bake the trained strength: loaders then need scale 1.0
        tensors[f"transformer.{m['module']}.{m['ab']}.weight"] = v.contiguous()
    # Metadata as diffusers' `_save_lora_weights` packs it: every LoraConfig key prefixed with "transformer.".
    config = lora_config_dict(r, r, False, dropout, target_modules) if bake else \
        lora_config_dict(r, alpha, rslora, dropout, target_modules)
    packed = {f"transformer.{k}": v for k, v in config.items()}
    info = {"format_version": 1, "trained_r": int(r), "trained_alpha": float(alpha), "trained_rslora": bool(rslora),
            "baked": bool(bake), "baked_scale": scale,
            **(dict(extra_info) if extra_info else {})}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True),
                INFO_KEY: json.dumps(info, sort_keys=True, default=str)}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_safetensors(out_dir / DIFFUSERS_WEIGHT_NAME, tensors, metadata)
    return out_dir / DIFFUSERS_WEIGHT_NAME


def to_upstream_key(key: str) -> str:
    """`layers.3.cross_attn.to_out.0.lora_B.weight` -> `base_model.model.layers.3.cross_attn.o_proj.lora_B.weight`."""
    m = _KEY_RE.match(key)
    if not m:
        raise ModelError(f"unexpected LoRA key {key!r} (expected <module>.lora_A|lora_B.weight)")
    module = m["module"]
    for diff, up in _TO_UPSTREAM.items():
        if module.endswith("." + diff):
            module = module[: -len(diff)] + up
            break
    else:
        if not module.split(".")[-1].endswith("_proj"):  # mlp.{gate,up,down}_proj share upstream's names
            raise ModelError(f"LoRA module {module!r} has no upstream ACE-Step 1.5 name; "
                             f"use lora.target_modules among {sorted(_TO_UPSTREAM)} or the mlp *_proj layers")
    return f"base_model.model.{module}.{m['ab']}.weight"


def upstream_target_modules(target_modules: list[str]) -> list[str]:
    return sorted({_TO_UPSTREAM.get(t, t.split(".")[-1]) for t in target_modules})


def save_peft_adapter(state: Mapping[str, torch.Tensor], out_dir: str | Path, *, r: int, alpha: float, rslora: bool,
                      dropout: float, target_modules: list[str], base_model: str | None = None) -> Path:
    """Write upstream 1.5's PEFT folder: `adapter_config.json` + `adapter_model.safetensors`, trained r/alpha/rsLoRA."""
    out_dir = Path(out_dir)
    tensors = {to_upstream_key(k): v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    config = lora_config_dict(r, alpha, rslora, dropout, upstream_target_modules(target_modules))
    config["base_model_name_or_path"] = base_model
    with atomic_dir(out_dir) as tmp:
        (tmp / PEFT_WEIGHT_NAME).write_bytes(safetensors_bytes(tensors, {"format": "pt"}))
        atomic_write_json(tmp / PEFT_CONFIG_NAME, config)
    return out_dir


COMFYUI_PREFIX = "base_model.model."


def save_comfyui_folder(state: Mapping[str, torch.Tensor], out_dir: str | Path, *, variant: str, r: int,
                        alpha: float, rslora: bool, **_other: Any) -> Path:
    """`out_dir/lofi-lora_ace-step-v15-<variant>.safetensors` (the only file there): copy it to ComfyUI/models/loras."""
    with atomic_dir(Path(out_dir)) as tmp:
        name = save_comfyui_adapter(state, tmp / f"lofi-lora_ace-step-v15-{variant}.safetensors", r=r, alpha=alpha,
                                    rslora=rslora).name
    return Path(out_dir) / name


def save_comfyui_adapter(state: Mapping[str, torch.Tensor], path: str | Path, *, r: int, alpha: float,
                         rslora: bool) -> Path:
    """Write one safetensors file that ComfyUI's LoRA loader applies at the trained strength with strength 1.0.

    ComfyUI (comfy/lora.py `model_lora_keys_unet`, its ACEStep15 branch) maps `base_model.model.<m>` onto the model
    weight `diffusion_model.decoder.<m>.weight`, where <m> is upstream's module name (`layers.3.self_attn.q_proj`).
    Its LoRA adapter (comfy/weight_adapter/lora.py) reads `<m>.lora_B.weight` (up), `<m>.lora_A.weight` (down) and
    the optional scalar `<m>.alpha`, and adds `strength * alpha / rank * up @ down` with rank = rows of lora_A.
    Without `.alpha` the scale is 1.0 (ComfyUI issue #12374: the PEFT file keeps alpha in adapter_config.json,
    which ComfyUI never reads). So each layer gets `alpha = trained_scale * rank`, which also carries rsLoRA's
    `alpha / sqrt(r)`; lora_A/lora_B stay the trained tensors.
    """
    path = Path(path)
    comfy_alpha = torch.tensor(lora_scale(r, alpha, rslora) * int(r), dtype=torch.float32)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        up_key = to_upstream_key(key)
        module = up_key[: -len(".lora_A.weight")]  # lora_A and lora_B suffixes have the same length
        if value.shape[0 if ".lora_A." in up_key else 1] != int(r):
            raise ModelError(f"{key}: shape {tuple(value.shape)} does not have rank {r} (lora.r)")
        tensors[up_key] = value.detach().to("cpu", torch.float32).contiguous()
        tensors[f"{module}.alpha"] = comfy_alpha.clone()  # one tensor per layer: safetensors refuses shared memory
    info = {"trained_r": int(r), "trained_alpha": float(alpha), "trained_rslora": bool(rslora),
            "scale": lora_scale(r, alpha, rslora), "loader": "ComfyUI LoraLoaderModelOnly, strength 1.0"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(path, tensors, {"format": "pt", INFO_KEY: json.dumps(info, sort_keys=True)})
    return path


def read_info(adapter_dir: str | Path) -> dict[str, Any]:
    """The `lofi_lora` header of a diffusers adapter file (trained r/alpha/rsLoRA, baked scale, step...)."""
    from safetensors import safe_open

    path = Path(adapter_dir) / DIFFUSERS_WEIGHT_NAME
    if not path.is_file():
        raise ModelError(f"{path}: no LoRA weights file")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get(INFO_KEY, "{}"))


def load_into_pipeline(pipe: Any, adapter_dir: str | Path, adapter_name: str | None = None) -> Any:
    """Load an adapter folder (checkpoint, final/ or best/) into an AceStepPipeline at full trained strength."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / DIFFUSERS_WEIGHT_NAME).is_file():
        raise ModelError(f"{adapter_dir}: missing {DIFFUSERS_WEIGHT_NAME}; pass a checkpoint, final/ or best/ folder")
    # weight_name makes diffusers read the metadata header; the baked scale makes it right even without it.
    pipe.load_lora_weights(str(adapter_dir), weight_name=DIFFUSERS_WEIGHT_NAME, adapter_name=adapter_name)
    return pipe


def load_into_transformer(transformer: Any, adapter_dir: str | Path, adapter_name: str | None = None) -> Any:
    """Same as `load_into_pipeline` for a bare AceStepTransformer1DModel (evaluation without a pipeline)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / DIFFUSERS_WEIGHT_NAME).is_file():
        raise ModelError(f"{adapter_dir}: missing {DIFFUSERS_WEIGHT_NAME}")
    transformer.load_lora_adapter(str(adapter_dir), weight_name=DIFFUSERS_WEIGHT_NAME, prefix="transformer",
                                  adapter_name=adapter_name)
    return transformer
