"""Stage `base_model`: build + save the tiny pipeline, or verify a real one in place and record it (no copy).

`model.source=pretrained` (the embedded default: the committed tiny base, `lofi_lora.model.pretrained`) and `build`
(its seeded random-weight twin, and full-size rehearsals) save the pipeline to `paths.base_model`; `diffusers|local|hub|native` (upstream's
checkpoint converted once by `lofi_lora.model.native`) writes only `manifest.json` there, naming the weights.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lofi_lora.model.xl
from lofi_lora.core.config import require, to_plain
from lofi_lora.core.errors import ConfigError, ModelError
from lofi_lora.core.fsutil import atomic_dir, atomic_write_json
from lofi_lora.model.load import MANIFEST, WEIGHT_COMPONENTS, files_digest, files_record, verify_pipeline_dir
from lofi_lora.model.native.convert import converted_pipeline
from lofi_lora.model.pretrained import pretrained_pipeline
from lofi_lora.model.tiny import build_pipeline, tokenizer_corpus, train_tokenizer

log = logging.getLogger(__name__)


def _resolve_weights(model_cfg) -> tuple[Path, dict]:
    """The folder of a real model (local path or pinned hub snapshot) and the manifest fields naming it."""
    source = str(require(model_cfg, "source"))
    if source == "native":  # upstream's checkpoints/ layout, converted once into a cache next to it
        path, record = converted_pipeline(str(require(model_cfg, "path")), model_cfg.get("native_dir"),
                                          model_cfg.get("converted_dir"))
        return path, {"weights_dir": str(path), "native_root": record["root"],
                      "native_dir": record["variant_dir"], "native_key": record["key"]}
    if source in ("local", "diffusers"):
        path = Path(str(require(model_cfg, "path"))).expanduser().resolve()
        return path, {"weights_dir": str(path)}
    if source == "hub":
        hub_id = str(require(model_cfg, "hub_id"))
        revision = model_cfg.get("revision")
        if not revision:
            raise ConfigError("`model.revision` is required with model.source=hub: pin a commit of "
                              f"{hub_id} (`-S model.revision=<sha>`)")
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(repo_id=hub_id, revision=str(revision)))
        except Exception as e:  # offline, unknown repo or revision
            raise ModelError(f"`model.hub_id` = {hub_id} at `model.revision` = {revision}: cannot fetch ({e})") from e
        return path, {"weights_dir": str(path), "hub_id": hub_id, "revision": str(revision)}
    raise ConfigError(f"`model.source` = {source!r}: expected pretrained, build, diffusers (or local), native or hub")


def run_base_model(cfg: Any) -> dict:
    """Stage base_model: build + save the tiny pipeline, or verify a real one and fingerprint it (no copy)."""
    model_cfg = cfg.model
    out = Path(str(require(cfg, "paths.base_model")))
    source = str(require(model_cfg, "source"))
    variant = str(require(model_cfg, "variant"))
    t0 = time.perf_counter()
    manifest: dict[str, Any] = {"version": 1, "name": str(require(model_cfg, "name")), "source": source,
                                "variant": variant, "weights_dir": None}
    if source in ("build", "pretrained"):
        build = to_plain(require(model_cfg, "build"))
        seed = int(require(cfg, "seed"))
        if source == "pretrained":
            pipe, fields = pretrained_pipeline(str(require(model_cfg, "path")), build, variant)
            manifest.update(fields)
        else:
            tokenizer = train_tokenizer(tokenizer_corpus(str(require(cfg, "paths.presets"))), int(build["vocab_size"]))
            pipe = build_pipeline(build, variant, seed, tokenizer)
        with atomic_dir(out) as tmp:
            pipe.save_pretrained(str(tmp), safe_serialization=True)
            components = verify_pipeline_dir(tmp, variant, key="paths.base_model")
            files = files_record(tmp)
            manifest.update(seed=seed, build=build, components=components, files=files, fingerprint=files_digest(files))
            atomic_write_json(tmp / MANIFEST, manifest)
        params = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in WEIGHT_COMPONENTS}
    else:
        folder, fields = _resolve_weights(model_cfg)
        key = "model.hub_id" if source == "hub" else "model.path"
        components = verify_pipeline_dir(folder, variant, key=key)
        if (warning := lofi_lora.model.xl.stock_xl_warning(folder)):
            log.warning(warning)
        files = files_record(folder)
        manifest.update(fields, components=components, files=files, fingerprint=files_digest(files))
        with atomic_dir(out) as tmp:
            atomic_write_json(tmp / MANIFEST, manifest)
        params = {}
    size = sum(r["bytes"] for r in manifest["files"].values())
    seconds = time.perf_counter() - t0
    log.info("base model %s (%s): %d files, %.1f MB, fingerprint %s, %.1f s", manifest["name"], source,
             len(manifest["files"]), size / 1e6, manifest["fingerprint"][:12], seconds)
    return {"source": source, "files": len(manifest["files"]), "mbytes": round(size / 1e6, 3),
            "params": sum(params.values()) or None, "fingerprint": manifest["fingerprint"][:16],
            "seconds": round(seconds, 2)}
