"""The committed tiny pretrained pipeline (`model.source=pretrained`): one safetensors file, its tokenizer, its record.

Folder layout (`models/pretrained/tiny/`): `tiny_pretrained.safetensors` (every weight of the four model
components, keys prefixed `vae.`, `text_encoder.`, `transformer.`, `condition_encoder.`), `tokenizer.json`
(the byte-level BPE the text encoder was trained with: it must never be retrained from presets that changed) and
`provenance.json` (how the weights were made, with the sha256 of both files). Loading rebuilds the pipeline from
diffusers' classes with the recorded sizes and loads the weights strictly, after checking the hashes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lofi_lora.core.errors import ConfigError, ModelError
from lofi_lora.core.fsutil import atomic_write_json, atomic_write_text, read_json, save_safetensors, sha256_file
from lofi_lora.model.tiny import build_pipeline
from lofi_lora.model.tiny import load_tokenizer as load_tiny_tokenizer

WEIGHTS_FILE = "tiny_pretrained.safetensors"
TOKENIZER_FILE = "tokenizer.json"
PROVENANCE_FILE = "provenance.json"
COMPONENTS = ("vae", "text_encoder", "transformer", "condition_encoder")


def pipeline_tensors(pipe) -> dict[str, torch.Tensor]:
    """`{component.key: float32 CPU tensor}` for every weight and buffer the four model components hold."""
    out = {}
    for comp in COMPONENTS:
        for k, v in getattr(pipe, comp).state_dict().items():
            out[f"{comp}.{k}"] = v.detach().to("cpu", torch.float32).contiguous()
    return out


def save(pipe, folder: str | Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """Write weights, tokenizer and provenance (with both files' sha256 and sizes) into `folder`; returns the record."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / WEIGHTS_FILE, pipeline_tensors(pipe))
    atomic_write_text(folder / TOKENIZER_FILE, pipe.tokenizer.backend_tokenizer.to_str(pretty=True) + "\n")
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
             for name in (WEIGHTS_FILE, TOKENIZER_FILE)}
    record = {**provenance, "files": files}
    atomic_write_json(folder / PROVENANCE_FILE, record)
    return record


def verify(folder: str | Path) -> dict[str, Any]:
    """The provenance record, after checking that every file it names is present with its recorded sha256."""
    folder = Path(folder)
    prov_f = folder / PROVENANCE_FILE
    if not prov_f.is_file():
        raise ModelError(f"{prov_f} is missing: the pretrained tiny model is not at {folder} "
                         "(make it with `python benchmarks/pretrain_tiny.py`)")
    record = read_json(prov_f)
    for name, rec in record.get("files", {}).items():
        f = folder / name
        if not f.is_file():
            raise ModelError(f"{f} is missing (listed in {prov_f})")
        if sha256_file(f) != rec["sha256"]:
            raise ModelError(f"{f}: sha256 differs from {prov_f} (weights changed after pretraining)")
    return record


def load_tokenizer(folder: str | Path):
    return load_tiny_tokenizer(Path(folder) / TOKENIZER_FILE)


def load(folder: str | Path):
    """The pretrained `AceStepPipeline` (float32, CPU), hashes checked first."""
    from safetensors.torch import load_file

    record = verify(folder)
    pipe = build_pipeline(record["build"], record["variant"], int(record["seed"]), load_tokenizer(folder))
    tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
    for comp in COMPONENTS:
        prefix = comp + "."
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = getattr(pipe, comp).load_state_dict(part, strict=False)
        if missing or unexpected:
            raise ModelError(f"{Path(folder) / WEIGHTS_FILE}: {comp} does not match the recorded sizes "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return pipe


def pretrained_pipeline(folder: str | Path, build: dict, variant: str) -> tuple[Any, dict]:
    """Stage base_model's pipeline for `model.source=pretrained`, and its manifest fields; the config names its sizes.

    Raises:
        ConfigError: `model.build` or `model.variant` differ from what the weights were trained at.
        ModelError: a file is missing or its sha256 differs from the record.
    """
    record = verify(folder)
    if record["variant"] != variant:
        raise ConfigError(f"`model.variant` = {variant!r}, but the pretrained weights in {folder} are "
                          f"{record['variant']!r}")
    diff = sorted(k for k in set(build) | set(record["build"]) if build.get(k) != record["build"].get(k))
    if diff:
        raise ConfigError(f"`model.build.{diff[0]}` = {build.get(diff[0])!r}, but the pretrained weights in {folder} "
                          f"have {record['build'].get(diff[0])!r} (model.build must equal their provenance.json)")
    return load(folder), {"pretrained": {"seed": record["seed"], "files": record["files"]}}
