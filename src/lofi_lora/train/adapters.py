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

Adapter types (`adapter.type`, docs/ADAPTERS.md): `lora`, `dora` (PEFT LoraConfig(use_dora=True): LoRA plus a
trained magnitude per output row, `lora_magnitude_vector`) and `lokr` (PEFT LoKrConfig: `kron(w1, w2)` with w2 of
rank r). All share the shape keys of `lora` (r, alpha, target_modules). Tensor keys are PEFT's own
(`<module>.lora_A.weight`, `<module>.lora_magnitude_vector`, `<module>.lokr_w1`...). diffusers' LoRA loader reads
LoRA and DoRA files; a LoKr file (same name, same header) is loaded through PEFT (`load_into_transformer`).
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
EMA_WEIGHT_NAME = "ema_lora_weights.safetensors"  # a checkpoint's EMA adapter (train.ema_decay > 0)
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
INFO_KEY = "lofi_lora"
ADAPTER_NAME = "default"

# diffusers module name -> upstream ACE-Step 1.5 module name (inverse of diffusers'
# `_convert_non_diffusers_ace_step_lora_to_diffusers`).
_TO_UPSTREAM = {k: v for k, v in LORA_TARGETS.items() if k != v}  # attention; the mlp *_proj keep their names
_KEY_RE = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_[AB]|lora_magnitude_vector|lokr_w[12](?:_[ab])?|lokr_t2)"
                     r"(?:\.(?!weight$)(?P<adapter>[^.]+))?(?:\.weight)?$")
ADAPTER_PARAM_MARKS = (".lora_", ".lokr_")


def is_adapter_param(name: str) -> bool:
    """Whether a model parameter name belongs to a PEFT LoRA/DoRA/LoKr adapter."""
    return any(mark in name for mark in ADAPTER_PARAM_MARKS)


def _split_key(key: str) -> tuple[str, str]:
    m = _KEY_RE.match(key)
    if not m:
        raise ModelError(f"unexpected adapter key {key!r} (expected <module>.lora_A|lora_B.weight, "
                         "<module>.lora_magnitude_vector or <module>.lokr_*)")
    return m["module"], m["ab"]


def _key(module: str, kind: str) -> str:
    """PEFT's state-dict name of one adapter tensor: lora_A/lora_B carry `.weight`, the others do not."""
    return f"{module}.{kind}.weight" if kind in ("lora_A", "lora_B") else f"{module}.{kind}"


def canonical_key(param_name: str, adapter_name: str = ADAPTER_NAME) -> str | None:
    """A model parameter name as PEFT's state dict names it (adapter name dropped), or None for another adapter."""
    parts = param_name.split(".")
    if adapter_name not in parts:
        return None
    parts.remove(adapter_name)
    module, kind = _split_key(".".join(parts))
    return _key(module, kind)


def lora_scale(r: int, alpha: float, rslora: bool) -> float:
    """PEFT's scaling factor: alpha/sqrt(r) with rsLoRA, else alpha/r."""
    return float(alpha) / (math.sqrt(r) if rslora else r)


def peft_config(r: int, alpha: float, rslora: bool, dropout: float, target_modules: list[str],
                adapter_type: str = "lora", lokr: Mapping[str, Any] | None = None) -> Any:
    """The PEFT config of an adapter type: LoraConfig (lora; dora with use_dora) or LoKrConfig (lokr)."""
    from peft import LoKrConfig, LoraConfig

    if adapter_type in ("lora", "dora"):
        return LoraConfig(r=int(r), lora_alpha=alpha, use_rslora=bool(rslora), lora_dropout=float(dropout),
                          target_modules=list(target_modules), init_lora_weights=True,
                          use_dora=adapter_type == "dora")
    if adapter_type == "lokr":
        if rslora:
            raise ModelError("adapter.type=lokr has no rsLoRA scale: set lora.rslora=false")
        if lokr is None:
            raise ModelError("adapter.type=lokr needs the adapter.lokr section")
        return LoKrConfig(r=int(r), alpha=alpha, target_modules=list(target_modules), init_weights=True,
                          decompose_both=bool(lokr["decompose_both"]), decompose_factor=int(lokr["decompose_factor"]),
                          rank_dropout=float(lokr["rank_dropout"]), module_dropout=float(lokr["module_dropout"]))
    raise ModelError(f"adapter.type={adapter_type!r}: not one of lora, dora, lokr")


def lora_config_dict(r: int, alpha: float, rslora: bool, dropout: float, target_modules: list[str],
                     adapter_type: str = "lora", lokr: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete PEFT config as a JSON-able dict (what PEFT itself writes)."""
    out = peft_config(r, alpha, rslora, dropout, target_modules, adapter_type, lokr).to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in out.items()}


def _traceable_dora() -> None:
    """Let torch.compile trace PEFT's DoRA layers in one graph: PEFT's `dequantize_module_weight` (called by each
    DoRA forward) asks `type(weight).__module__.startswith("torchao.")`, which dynamo cannot trace (a graph break per
    layer). For a plain `nn.Linear` base (the DiT's, bf16/fp32, never quantized here) there is nothing to dequantize:
    its weight is returned as is; any other module goes to PEFT's function."""
    from peft.tuners.lora import dora

    original = dora.dequantize_module_weight
    if getattr(original, "_lofi_lora", False):
        return

    def dequantize(module: torch.nn.Module):
        if type(module) is torch.nn.Linear:
            return module.weight
        return original(module)

    dequantize._lofi_lora = True
    dora.dequantize_module_weight = dequantize


def skip_idle_lokr_dropout(model: torch.nn.Module) -> int:
    """Call after `model.train()`. PEFT's LoKr forward draws `torch.rand(1) > module_dropout` in training mode even
    when that dropout is 0: a data-dependent branch (a graph break per layer under torch.compile, CUDA graphs split)
    and a host-side draw per layer. With both LoKr dropouts at 0 its eval-mode forward computes the same thing, so
    those layers go to eval mode (the Linear inside has no mode-dependent behaviour). Returns how many."""
    from peft.tuners.lokr import LoKrLayer

    n = 0
    for mod in model.modules():
        if isinstance(mod, LoKrLayer) and not any(mod.module_dropout.get(a) or mod.rank_dropout.get(a)
                                                  for a in mod.active_adapters):
            mod.eval()
            n += 1
    return n


def inject_lora(model: torch.nn.Module, *, r: int, alpha: float, rslora: bool, dropout: float,
                target_modules: list[str], adapter_type: str = "lora",
                lokr: Mapping[str, Any] | None = None) -> int:
    """Add a PEFT adapter (LoRA, DoRA or LoKr) to a diffusers model, freeze everything else, keep the adapter
    params in fp32 (also under a bf16 base); returns the number of trainable parameters."""
    config = peft_config(r, alpha, rslora, dropout, target_modules, adapter_type, lokr)
    if adapter_type == "dora":
        _traceable_dora()
    model.add_adapter(config, adapter_name=ADAPTER_NAME)
    n = 0
    for name, p in model.named_parameters():
        is_lora = is_adapter_param(name)
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
        raise ModelError(f"model has no adapter named {adapter_name!r}")
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(sd.items())}


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    save_safetensors(path, tensors, metadata)


def _bake_kind(state: Mapping[str, torch.Tensor], module: str, adapter_type: str) -> str:
    """The tensor of a layer that carries the baked scale: lora_B (LoRA, DoRA), else LoKr's w1 (or its w1_a)."""
    if adapter_type != "lokr":
        return "lora_B"
    return "lokr_w1" if f"{module}.lokr_w1" in state else "lokr_w1_a"


def adapter_scale(r: int, alpha: float, rslora: bool, adapter_type: str = "lora") -> float:
    """The trained scale of an adapter type: PEFT's LoRA/DoRA scale, LoKr's alpha/r."""
    return lora_scale(r, alpha, rslora and adapter_type != "lokr")


def save_diffusers_adapter(state: Mapping[str, torch.Tensor], out_dir: str | Path, *, r: int, alpha: float,
                           rslora: bool, dropout: float, target_modules: list[str], bake: bool = True,
                           extra_info: Mapping[str, Any] | None = None, adapter_type: str = "lora",
                           lokr: Mapping[str, Any] | None = None, weight_name: str = DIFFUSERS_WEIGHT_NAME) -> Path:
    """Write `out_dir/pytorch_lora_weights.safetensors` for `AceStepPipeline.load_lora_weights`, full strength.

    `state` has diffusers module names without prefix (from `adapter_state_dict`); it is not modified.
    `bake=True` (final/, best/): scale folded into lora_B, right in any loader. `bake=False` (checkpoints): the
    exact training tensors (bitwise resume) with r/alpha/rsLoRA in the metadata, which diffusers >= 0.42 applies.
    """
    out_dir = Path(out_dir)
    scale = adapter_scale(r, alpha, rslora, adapter_type) if bake else 1.0
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, kind = _split_key(key)
        v = value.detach().to("cpu", torch.float32)
        if kind == _bake_kind(state, module, adapter_type):
            v = v * scale  # bake the trained strength: loaders then need scale 1.0
        tensors[f"transformer.{_key(module, kind)}"] = v.contiguous()
    # Metadata as diffusers' `_save_lora_weights` packs it: every LoraConfig key prefixed with "transformer.".
    config = lora_config_dict(r, r, False, dropout, target_modules, adapter_type, lokr) if bake else \
        lora_config_dict(r, alpha, rslora, dropout, target_modules, adapter_type, lokr)
    packed = {f"transformer.{k}": v for k, v in config.items()}
    info = {"format_version": 1, "trained_r": int(r), "trained_alpha": float(alpha), "trained_rslora": bool(rslora),
            "baked": bool(bake), "baked_scale": scale,
            **({"adapter_type": adapter_type} if adapter_type != "lora" else {}),  # lora files keep their bytes
            **(dict(extra_info) if extra_info else {})}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True),
                INFO_KEY: json.dumps(info, sort_keys=True, default=str)}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_safetensors(out_dir / weight_name, tensors, metadata)
    return out_dir / weight_name


def to_upstream_module(module: str) -> str:
    """`layers.3.cross_attn.to_out.0` -> `layers.3.cross_attn.o_proj` (upstream ACE-Step 1.5's module name)."""
    for diff, up in _TO_UPSTREAM.items():
        if module.endswith("." + diff):
            module = module[: -len(diff)] + up
            break
    else:
        if not module.split(".")[-1].endswith("_proj"):  # mlp.{gate,up,down}_proj share upstream's names
            raise ModelError(f"LoRA module {module!r} has no upstream ACE-Step 1.5 name; "
                             f"use lora.target_modules among {sorted(_TO_UPSTREAM)} or the mlp *_proj layers")
    return module


def to_upstream_key(key: str) -> str:
    """`layers.3.cross_attn.to_out.0.lora_B.weight` -> `base_model.model.layers.3.cross_attn.o_proj.lora_B.weight`."""
    module, kind = _split_key(key)
    return f"base_model.model.{_key(to_upstream_module(module), kind)}"


def upstream_target_modules(target_modules: list[str]) -> list[str]:
    return sorted({_TO_UPSTREAM.get(t, t.split(".")[-1]) for t in target_modules})


def save_peft_adapter(state: Mapping[str, torch.Tensor], out_dir: str | Path, *, r: int, alpha: float, rslora: bool,
                      dropout: float, target_modules: list[str], base_model: str | None = None,
                      adapter_type: str = "lora", lokr: Mapping[str, Any] | None = None) -> Path:
    """Write upstream 1.5's PEFT folder: `adapter_config.json` + `adapter_model.safetensors`, trained r/alpha/rsLoRA."""
    out_dir = Path(out_dir)
    tensors = {to_upstream_key(k): v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    config = lora_config_dict(r, alpha, rslora, dropout, upstream_target_modules(target_modules), adapter_type, lokr)
    config["base_model_name_or_path"] = base_model
    with atomic_dir(out_dir) as tmp:
        (tmp / PEFT_WEIGHT_NAME).write_bytes(safetensors_bytes(tensors, {"format": "pt"}))
        atomic_write_json(tmp / PEFT_CONFIG_NAME, config)
    return out_dir


COMFYUI_PREFIX = "base_model.model."


def save_comfyui_folder(state: Mapping[str, torch.Tensor], out_dir: str | Path, *, variant: str, r: int,
                        alpha: float, rslora: bool, adapter_type: str = "lora",
                        base_weights: Mapping[str, torch.Tensor] | None = None, **_other: Any) -> Path:
    """`out_dir/lofi-lora_ace-step-v15-<variant>.safetensors` (the only file there): copy it to ComfyUI/models/loras."""
    with atomic_dir(Path(out_dir)) as tmp:
        name = save_comfyui_adapter(state, tmp / f"lofi-lora_ace-step-v15-{variant}.safetensors", r=r, alpha=alpha,
                                    rslora=rslora, adapter_type=adapter_type, base_weights=base_weights).name
    return Path(out_dir) / name


def _group_by_module(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, kind = _split_key(key)
        layers.setdefault(module, {})[kind] = value.detach().to("cpu", torch.float32).clone()  # no shared storage
    return layers


def dora_base_weights(model: torch.nn.Module, adapter_name: str = ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """The frozen base weight (fp32, CPU) under each DoRA layer of `model`, keyed by module name: ComfyUI's DoRA
    patch divides by its row norms, so the ComfyUI file is written against them (`save_comfyui_adapter`)."""
    out = {}
    for name, mod in model.named_modules():
        mags = getattr(mod, "lora_magnitude_vector", None)
        if mags is not None and adapter_name in mags:
            out[name] = mod.get_base_layer().weight.detach().to("cpu", torch.float32)
    return out


def _comfy_dora_scale(layer: Mapping[str, torch.Tensor], base: torch.Tensor, scale: float) -> torch.Tensor:
    """ComfyUI's `weight_decompose` (comfy/weight_adapter/base.py) with an output-axis `dora_scale` [out, 1] makes
    `(W + s B A) * dora_scale / (||W||_row + eps)`, the norm taken of the base W; PEFT's DoRA is
    `(W + s B A) * m / ||W + s B A||_row`. So dora_scale = m * (||W||_row + eps) / ||W + s B A||_row (ComfyUI
    patches in float32)."""
    merged = base + scale * (layer["lora_B"] @ layer["lora_A"])
    base_norm = base.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps
    return (layer["lora_magnitude_vector"].reshape(-1, 1) * base_norm / merged.norm(dim=1, keepdim=True)).contiguous()


def save_comfyui_adapter(state: Mapping[str, torch.Tensor], path: str | Path, *, r: int, alpha: float,
                         rslora: bool, adapter_type: str = "lora",
                         base_weights: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write one safetensors file that ComfyUI's LoRA loader applies at the trained strength with strength 1.0.

    ComfyUI (comfy/lora.py `model_lora_keys_unet`, its ACEStep15 branch) maps `base_model.model.<m>` and
    `lycoris_<m with . as _>` onto the model weight `diffusion_model.decoder.<m>.weight`, where <m> is upstream's
    module name (`layers.3.self_attn.q_proj`).
    - LoRA (comfy/weight_adapter/lora.py) reads `<m>.lora_B.weight` (up), `<m>.lora_A.weight` (down) and
      the optional scalar `<m>.alpha`, and adds `strength * alpha / rank * up @ down` with rank = rows of lora_A.
      Without `.alpha` the scale is 1.0 (ComfyUI issue #12374: the PEFT file keeps alpha in adapter_config.json,
      which ComfyUI never reads). So each layer gets `alpha = trained_scale * rank`, which also carries rsLoRA's
      `alpha / sqrt(r)`; lora_A/lora_B stay the trained tensors.
    - DoRA: the same plus `<m>.dora_scale` [out, 1] (`_comfy_dora_scale`, needs the base weights).
    - LoKr (comfy/weight_adapter/lokr.py; ACE-Step 1.5 LoKr files use `lycoris_` names, ComfyUI#12665): the
      `lokr_*` tensors; ComfyUI applies `alpha / dim` only where a factor is low-rank (dim = its rank), else 1.0,
      so `.alpha = scale * dim` there, and with no low-rank factor the scale is baked into `lokr_w1`.
    """
    path = Path(path)
    scale = adapter_scale(r, alpha, rslora, adapter_type)
    tensors: dict[str, torch.Tensor] = {}
    for module, layer in _group_by_module(state).items():
        up = to_upstream_module(module)
        if adapter_type == "lokr":
            stem = "lycoris_" + up.replace(".", "_")
            rank = next((layer[k].shape[0] for k in ("lokr_w2_b", "lokr_w1_b") if k in layer), None)
            for kind, v in layer.items():
                tensors[f"{stem}.{kind}"] = v * scale if rank is None and kind == "lokr_w1" else v
            if rank is not None:
                tensors[f"{stem}.alpha"] = torch.tensor(scale * rank, dtype=torch.float32)
            continue
        stem = f"{COMFYUI_PREFIX}{up}"
        if layer["lora_A"].shape[0] != int(r):
            raise ModelError(f"{module}: lora_A shape {tuple(layer['lora_A'].shape)} does not have rank {r} (lora.r)")
        tensors[f"{stem}.lora_A.weight"], tensors[f"{stem}.lora_B.weight"] = layer["lora_A"], layer["lora_B"]
        tensors[f"{stem}.alpha"] = torch.tensor(scale * int(r), dtype=torch.float32)  # one tensor per layer
        if adapter_type == "dora":
            if base_weights is None or module not in base_weights:
                raise ModelError(f"{module}: a DoRA ComfyUI file needs the base weight of the layer")
            tensors[f"{stem}.dora_scale"] = _comfy_dora_scale(layer, base_weights[module].float(), scale)
    info = {"trained_r": int(r), "trained_alpha": float(alpha), "trained_rslora": bool(rslora),
            "scale": scale, "loader": "ComfyUI LoraLoaderModelOnly, strength 1.0",
            **({"adapter_type": adapter_type} if adapter_type != "lora" else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(path, tensors, {"format": "pt", INFO_KEY: json.dumps(info, sort_keys=True)})
    return path


def read_info(adapter_dir: str | Path, weight_name: str = DIFFUSERS_WEIGHT_NAME) -> dict[str, Any]:
    """The `lofi_lora` header of a diffusers adapter file (trained r/alpha/rsLoRA, baked scale, step...)."""
    from safetensors import safe_open

    path = Path(adapter_dir) / weight_name
    if not path.is_file():
        raise ModelError(f"{path}: no LoRA weights file")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get(INFO_KEY, "{}"))


def _load_through_peft(transformer: Any, path: Path, adapter_name: str | None) -> Any:
    """A LoKr adapter file (diffusers' loader reads LoRA/DoRA only): its PEFT config from the header, injected and
    filled by PEFT."""
    from peft import LoKrConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    packed = json.loads(meta.get(METADATA_KEY, "{}"))
    fields = {k.removeprefix("transformer."): v for k, v in packed.items()}
    known = set(LoKrConfig.__dataclass_fields__) - {"peft_type", "task_type", "peft_version"}
    config = LoKrConfig(**{k: v for k, v in fields.items() if k in known})
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(path)).items()}
    name = adapter_name or ADAPTER_NAME
    transformer.add_adapter(config, adapter_name=name)
    result = set_peft_model_state_dict(transformer, state, adapter_name=name)
    missing = [k for k in getattr(result, "missing_keys", []) if is_adapter_param(k) and f".{name}" in k]
    if missing or getattr(result, "unexpected_keys", []):
        raise ModelError(f"{path}: LoKr tensors do not match the model ({len(missing)} missing, "
                         f"{len(getattr(result, 'unexpected_keys', []))} unexpected)")
    transformer.set_adapters([name])
    return transformer


def load_into_pipeline(pipe: Any, adapter_dir: str | Path, adapter_name: str | None = None,
                       weight_name: str = DIFFUSERS_WEIGHT_NAME) -> Any:
    """Load an adapter folder (checkpoint, final/ or best/) into an AceStepPipeline at full trained strength."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / weight_name).is_file():
        raise ModelError(f"{adapter_dir}: missing {weight_name}; pass a checkpoint, final/ or best/ folder")
    if read_info(adapter_dir, weight_name).get("adapter_type") == "lokr":
        _load_through_peft(pipe.transformer, adapter_dir / weight_name, adapter_name)
        return pipe
    # weight_name makes diffusers read the metadata header; the baked scale makes it right even without it.
    pipe.load_lora_weights(str(adapter_dir), weight_name=weight_name, adapter_name=adapter_name)
    return pipe


def load_into_transformer(transformer: Any, adapter_dir: str | Path, adapter_name: str | None = None,
                          weight_name: str = DIFFUSERS_WEIGHT_NAME) -> Any:
    """Same as `load_into_pipeline` for a bare AceStepTransformer1DModel (evaluation without a pipeline)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / weight_name).is_file():
        raise ModelError(f"{adapter_dir}: missing {weight_name}")
    if read_info(adapter_dir, weight_name).get("adapter_type") == "lokr":
        return _load_through_peft(transformer, adapter_dir / weight_name, adapter_name)
    transformer.load_lora_adapter(str(adapter_dir), weight_name=weight_name, prefix="transformer",
                                  adapter_name=adapter_name)
    return transformer
