"""Loading the base ACE-Step 1.5 pipeline that stage `base_model` recorded, and verifying a pipeline folder.

Every stage after `base_model` loads through `model_dir` / `load_pipeline`, so no code after it knows whether the
model is tiny, converted from upstream's native checkpoint (`lofi_lora.model.native`) or a diffusers folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable

import torch

import lofi_lora.model.xl  # noqa: F401  (registers the XL condition encoder that native XL conversions name)
from lofi_lora.core.config import require
from lofi_lora.core.errors import ConfigError, ModelError
from lofi_lora.core.fsutil import read_json, sha256_file
from lofi_lora.model.variants import check_weights_variant

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# component -> (libraries, class) as model_index.json records them; None: any class of that library.
# The condition encoder lives in the pipeline's own module, which model_index.json names "ace_step".
COMPONENTS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "vae": (("diffusers",), "AutoencoderOobleck"),
    "text_encoder": (("transformers",), None),
    "tokenizer": (("transformers",), None),
    "transformer": (("diffusers",), "AceStepTransformer1DModel"),
    "condition_encoder": (("ace_step", "diffusers", "lofi_lora.model.xl"), None),  # XL: see ace_step_xl.py
    "scheduler": (("diffusers",), "FlowMatchEulerDiscreteScheduler"),
}
WEIGHT_COMPONENTS = ("vae", "text_encoder", "transformer", "condition_encoder")


def read_manifest(base_model_path: str | Path) -> dict:
    """The manifest stage base_model wrote; a clear ModelError when the stage has not run."""
    path = Path(base_model_path) / MANIFEST
    if not path.is_file():
        raise ModelError(f"{path} is missing: run stage base_model first (`dvc repro base_model`)")
    return read_json(path)


def model_dir(model_cfg, base_model_path: str | Path) -> Path:
    """Folder to load the pipeline from: `base_model_path` itself (built) or the verified `model.path` / hub snapshot.

    Raises:
        ModelError: the manifest belongs to another model config, or the weights moved or changed size.
    """
    base = Path(base_model_path)
    manifest = read_manifest(base)
    name, source = str(require(model_cfg, "name")), str(require(model_cfg, "source"))
    if manifest.get("name") != name or manifest.get("source") != source:
        raise ModelError(f"{base / MANIFEST} was written for model {manifest.get('name')!r} "
                         f"(source {manifest.get('source')!r}), the config asks for {name!r} ({source!r}): "
                         "run stage base_model again")
    folder = Path(manifest["weights_dir"]) if manifest.get("weights_dir") else base
    if not folder.is_dir():
        key = "model.hub_id" if source == "hub" else "model.path"
        raise ModelError(f"`{key}`: weights folder {folder} recorded in {base / MANIFEST} no longer exists")
    for rel, rec in manifest.get("files", {}).items():  # cheap check (sizes); sha256 was taken by base_model
        f = folder / rel
        if not f.is_file() or f.stat().st_size != rec["bytes"]:
            raise ModelError(f"{f} is missing or changed since stage base_model fingerprinted it: "
                             "run stage base_model again")
    return folder


def weights_digest(base_model_path: str | Path) -> str:
    """Hash of every weight/config file of the base model (from its manifest): keys caches derived from it."""
    return str(read_manifest(base_model_path)["fingerprint"])


def load_pipeline(model_cfg, base_model_path: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32):
    """`AceStepPipeline` in `dtype` on `device`, from the folder `model_dir` names (offline)."""
    from diffusers import AceStepPipeline

    folder = model_dir(model_cfg, base_model_path)
    # The audio tokenizer/detokenizer (cover / audio-code tasks, ~0.2 B parameters) are not used for text2music.
    pipe = AceStepPipeline.from_pretrained(str(folder), dtype=dtype, audio_tokenizer=None, audio_token_detokenizer=None)
    # Oobleck's activations grow with clip length (about 145 MiB per second of stereo audio in float32): one 240 s
    # clip alone needs tens of GiB untiled. diffusers' overlap-discard tiling (30 s windows, 2 s overlap per side on
    # encode, as upstream's trainers do) bounds it; the trimmed overlap keeps tile seams out of the latents.
    pipe.vae.enable_tiling()
    return pipe.to(device)


def load_transformer(model_cfg, base_model_path: str | Path, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32):
    """Only the DiT (`AceStepTransformer1DModel`): what training needs once conditions are cached."""
    from diffusers import AceStepTransformer1DModel

    folder = model_dir(model_cfg, base_model_path)
    model = AceStepTransformer1DModel.from_pretrained(str(folder), subfolder="transformer", dtype=dtype)
    return model.to(device)


def files_record(folder: Path, exclude: Iterable[str] = (MANIFEST,)) -> dict[str, dict]:
    """`{relative path: {bytes, sha256}}` for every file under `folder` (sorted, hidden/cache files skipped)."""
    skip = set(exclude)
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        if rel in skip or any(part.startswith(".") for part in f.relative_to(folder).parts):
            continue
        out[rel] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    return out


def files_digest(files: dict[str, dict]) -> str:
    blob = json.dumps({k: v["sha256"] for k, v in files.items()}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _safetensors_dtypes(folder: Path) -> list[str]:
    from safetensors import safe_open

    dtypes: set[str] = set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                dtypes.add(str(st.get_slice(k).get_dtype()))
    return sorted(dtypes)


def verify_pipeline_dir(folder: str | Path, variant: str, key: str = "model.path") -> dict:
    """Check a diffusers-format ACE-Step 1.5 folder without loading weights; returns its component summary.

    Checks: `model_index.json` names `AceStepPipeline`; every component is present with its config and the
    expected class; model components have floating-point safetensors weights; the component widths agree;
    the transformer's turbo flag and an upstream folder name match `model.variant` (`model.variants`).

    Raises:
        ConfigError: the folder does not exist. ModelError: anything else, naming `key` and the component.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"`{key}` = {folder}: no such folder (expected a diffusers-format ACE-Step 1.5 pipeline)")
    index_f = folder / "model_index.json"
    if not index_f.is_file():
        raise ModelError(f"`{key}` = {folder}: no model_index.json, so not a diffusers pipeline folder "
                         "(convert the checkpoint with diffusers' ACE-Step conversion script)")
    index = read_json(index_f)
    if index.get("_class_name") != "AceStepPipeline":
        raise ModelError(f"`{key}` = {folder}: model_index.json names {index.get('_class_name')!r}, "
                         "expected 'AceStepPipeline'")
    summary: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for name, (lib, cls) in COMPONENTS.items():
        entry = index.get(name)
        sub = folder / name
        if not entry or entry[0] is None or not sub.is_dir():
            raise ModelError(f"`{key}` = {folder}: component {name!r} is missing")
        if entry[0] not in lib or (cls and entry[1] != cls):
            raise ModelError(f"`{key}` = {folder}: component {name!r} is {entry[0]}.{entry[1]}, "
                             f"expected {lib[0]}.{cls or '*'}")
        rec: dict[str, Any] = {"class": entry[1]}
        if name == "tokenizer":
            if not ((sub / "tokenizer.json").is_file() or (sub / "tokenizer_config.json").is_file()):
                raise ModelError(f"`{key}` = {folder}: tokenizer has no tokenizer.json/tokenizer_config.json")
        else:
            cfg_f = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
            if not cfg_f.is_file():
                raise ModelError(f"`{key}` = {folder}: {name}/{cfg_f.name} is missing")
            configs[name] = read_json(cfg_f)
            if cls and configs[name].get("_class_name", cls) != cls:
                raise ModelError(f"`{key}` = {folder}: {name}/{cfg_f.name} is for "
                                 f"{configs[name].get('_class_name')!r}, expected {cls!r}")
        if name in WEIGHT_COMPONENTS:
            dtypes = _safetensors_dtypes(sub)
            if not dtypes:
                raise ModelError(f"`{key}` = {folder}: {name}/ has no .safetensors weights")
            bad = [d for d in dtypes if not re.fullmatch(r"(torch\.)?(float32|float16|bfloat16)|F32|F16|BF16", d)]
            if bad:
                raise ModelError(f"`{key}` = {folder}: {name} weights have non-float dtypes {bad} "
                                 "(quantized checkpoints cannot be trained with LoRA here)")
            rec["dtypes"] = dtypes
        summary[name] = rec

    tr, ce, vae, te = (configs[k] for k in ("transformer", "condition_encoder", "vae", "text_encoder"))
    checks = [
        ("text_encoder.hidden_size", te.get("hidden_size"), "condition_encoder.text_hidden_dim",
         ce.get("text_hidden_dim")),
        ("vae.decoder_input_channels", vae.get("decoder_input_channels"), "transformer.audio_acoustic_hidden_dim",
         tr.get("audio_acoustic_hidden_dim")),
        ("condition_encoder.hidden_size", ce.get("hidden_size"), "transformer.encoder_hidden_size",
         tr.get("encoder_hidden_size") or tr.get("hidden_size")),
    ]
    for ka, va, kb, vb in checks:
        if va is not None and vb is not None and va != vb:
            raise ModelError(f"`{key}` = {folder}: {ka}={va} does not match {kb}={vb}")
    if vae.get("downsampling_ratios") and math.prod(vae["downsampling_ratios"]) * 25 != vae.get("sampling_rate"):
        raise ModelError(f"`{key}` = {folder}: the VAE does not give 25 latent frames per second "
                         f"({vae.get('sampling_rate')} Hz / {math.prod(vae['downsampling_ratios'])})")
    for warning in check_weights_variant(variant, tr, folder):  # model_version alone (upstream defaults it) warns
        log.warning(warning)
    return summary
