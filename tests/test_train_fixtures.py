"""Shared builders for the train/checkpoint/adapter tests: a toy base model folder, a seeded cache and a config.

The base model is diffusers' real AceStepTransformer1DModel at toy size, saved the way stage base_model saves it
(transformer/ + condition_encoder weights + manifest.json), so `backend.load_transformer` loads it unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

TINY_DIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, in_channels=192, patch_size=2, sliding_window=16)
LATENT_C, CONTEXT_C, COND_H = 64, 128, 32
# run_train in a process of its own (torchrun, a fresh compile): argv[1] a saved config, argv[2] a step to resume from
TRAIN_CHILD = """
import sys
from omegaconf import OmegaConf
from lofi_lora.train import run_train
cfg = OmegaConf.load(sys.argv[1])
if len(sys.argv) > 2:
    cfg.train.resume_from = int(sys.argv[2])
run_train(cfg)
"""


def child_files(cfg, root: Path, script_text: str = TRAIN_CHILD) -> tuple[Path, Path]:
    """The child script and its saved config under `root`, ready for `python script cfg [step]` or torchrun."""
    script, cfg_file = root / "child.py", root / "cfg.yaml"
    script.write_text(script_text)
    OmegaConf.save(cfg, cfg_file)
    return script, cfg_file


def child_env() -> dict[str, str]:
    """This environment with the project's src first on PYTHONPATH (kept: a device run adds its wheels there)."""
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}


# One thread: the tiny matmuls run ~3x faster on a busy 2-core machine, and child processes match it.
torch.set_num_threads(1)


def tiny_transformer(seed: int = 0):
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(seed)
    return AceStepTransformer1DModel(**TINY_DIT).eval()


def make_base_model(root: Path, variant: str = "turbo", seed: int = 0) -> Path:
    """A base-model folder as stage base_model writes it, with only the parts training reads."""
    from safetensors.torch import save_file

    from lofi_lora.backend import files_record
    from lofi_lora.fsutil import atomic_write_json

    base = root / "base"
    tiny_transformer(seed).save_pretrained(str(base / "transformer"), safe_serialization=True)
    (base / "condition_encoder").mkdir(parents=True)
    g = torch.Generator().manual_seed(seed + 1)
    save_file({"null_condition_emb": torch.randn(1, 1, COND_H, generator=g)},
              str(base / "condition_encoder" / "diffusion_pytorch_model.safetensors"))
    files = files_record(base)
    atomic_write_json(base / "manifest.json", {"version": 1, "name": "tiny", "source": "build", "variant": variant,
                                               "weights_dir": None, "files": files, "fingerprint": "test"})
    return base


def make_cache(root: Path, n_clips: int = 6, repeat: int = 1, seed: int = 0, latent_c: int = LATENT_C,
               cond_h: int = COND_H) -> tuple[Path, Path]:
    """Seeded random cache entries of unequal lengths + a DatasetDict(train, holdout) with a clip_id column."""
    from datasets import Dataset, DatasetDict
    from safetensors.torch import save_file

    from lofi_lora.fsutil import atomic_write_json, sha256_file

    cache, dataset = root / "data" / "cache", root / "data" / "dataset"
    cache.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    manifest = {}
    ids = []
    for i in range(n_clips):
        cid = f"track{i // 2:02d}__{i % 2:03d}"
        t_len, l_len = 12 + 2 * (i % 4), 5 + (i % 3)
        mask = torch.ones(t_len, dtype=torch.int64)
        if i == 1:
            mask[-3:] = 0  # a clip whose cache itself carries padding
        # a structured target (smooth in time) that a LoRA can partly learn
        base_curve = torch.sin(torch.linspace(0, 3.0, t_len)).unsqueeze(-1) * torch.linspace(-1, 1, latent_c)
        t = {"target_latents": base_curve + 0.3 * torch.randn(t_len, latent_c, generator=g),
             "attention_mask": mask,
             "encoder_hidden_states": torch.randn(l_len, cond_h, generator=g),
             "encoder_attention_mask": torch.ones(l_len, dtype=torch.int64),
             "context_latents": torch.cat([torch.zeros(t_len, latent_c), torch.ones(t_len, latent_c)], dim=-1)}
        path = cache / f"{cid}.safetensors"
        save_file(t, str(path))
        manifest[cid] = {"file": path.name, "sha256": sha256_file(path)}
        ids.append(cid)
    atomic_write_json(cache / "manifest.json", {"version": 1, "clips": manifest})  # stage dataset's layout
    DatasetDict({"train": Dataset.from_dict({"clip_id": ids[:-1] * repeat}),
                 "holdout": Dataset.from_dict({"clip_id": ids[-1:]})}).save_to_disk(str(dataset))
    return dataset, cache


def make_cfg(root: Path, base: Path, dataset: Path, cache: Path, *, variant: str = "turbo", **train):
    t = dict(max_steps=12, batch_size=2, grad_accum=1, lr=3e-3, weight_decay=0.01, betas=[0.9, 0.999],
             warmup_steps=2, schedule="cosine", min_lr_ratio=0.01, max_grad_norm=1.0, precision="auto",
             grad_checkpointing=False, bucket_by_length=True, cfg_dropout="auto", timesteps="auto",
             logit_mean=-0.4, logit_std=1.0, checkpoint_every=5, keep_last=2, resume_from=None, log_every=1)
    t.update(train)
    return OmegaConf.create({
        "seed": 1234,
        "paths": {"dataset": str(dataset), "cache": str(cache), "base_model": str(base),
                  "lora": str(root / "models" / "lora"), "metrics": str(root / "metrics")},
        "model": {"name": "tiny", "source": "build", "path": str(base), "hub_id": None, "revision": None,
                  "variant": variant, "dtype": "bfloat16", "build": None},
        "lora": {"r": 4, "alpha": 8, "rslora": False, "dropout": 0.0,
                 "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]},
        "train": t,
    })


def workspace(root: Path, variant: str = "turbo", n_clips: int = 6, **train):
    base = make_base_model(root, variant)
    dataset, cache = make_cache(root, n_clips)
    return make_cfg(root, base, dataset, cache, variant=variant, **train)
