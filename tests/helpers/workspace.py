"""Builders for the train/checkpoint/adapter/evaluate tests: a toy base model folder, a seeded cache, and the real
configuration (conf/ composed) pointed at them and shrunk to a few steps.

The base model is diffusers' real AceStepTransformer1DModel at toy size, saved the way stage base_model saves it
(transformer/ + condition_encoder weights + manifest.json), so `load_transformer` loads it unchanged.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from helpers.config import real_config

# run_train in a process of its own (torchrun, a fresh compile): argv[1] a saved config, argv[2] a step to resume from;
# rank 0 prints what run_train returns (the run's counts, which the headline metrics file leaves out) on a `RESULT`
# line, in one write: two ranks printing to the same pipe interleaved their lines (CI, stop 21)
TRAIN_CHILD = """
import json
import os
import sys
from omegaconf import OmegaConf
from lofi_lora.core.config import load_config
from lofi_lora.train.stage import run_train
cfg = load_config(OmegaConf.load(sys.argv[1]))
if len(sys.argv) > 2:
    cfg.train.resume_from = int(sys.argv[2])
result = run_train(cfg)
if os.environ.get("RANK", "0") == "0":
    os.write(1, ("RESULT " + json.dumps(result) + "\\n").encode())
"""


def child_files(cfg, root: Path, script_text: str = TRAIN_CHILD) -> tuple[Path, Path]:
    """The child script and its saved config under `root`, ready for `python script cfg [step]` or torchrun."""
    script, cfg_file = root / "child.py", root / "cfg.yaml"
    script.write_text(script_text)
    OmegaConf.save(cfg, cfg_file)
    return script, cfg_file


def child_result(stdout: str) -> dict:
    """What run_train returned in a child (its one `RESULT` line, rank 0's: every rank has the same counts)."""
    return json.loads(stdout.split("RESULT ", 1)[1].splitlines()[0])


def child_env() -> dict[str, str]:
    """This environment with the project's src first on PYTHONPATH (kept: a device run adds its wheels there)."""
    src = str(Path(__file__).parents[2] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}


@functools.lru_cache(maxsize=None)
def tiny_build() -> dict:
    """The toy model's sizes: `model.build` of conf/model/toy.yaml, composed and checked."""
    return OmegaConf.to_container(real_config(Path("outputs-unused"), "model=toy").model.build)


def tiny_transformer(seed: int = 0, variant: str = "turbo"):
    """The tiny DiT as `lofi_lora.model.tiny` builds it, at the configured sizes, seeded random weights."""
    from lofi_lora.model.tiny import build_transformer

    torch.manual_seed(seed)
    return build_transformer(tiny_build(), variant).eval()


@dataclass(frozen=True)
class Widths:
    """A DiT's input widths: noisy/target latents, context latents (source + mask) and condition states."""

    latent: int
    context: int
    cond: int


def widths(model) -> Widths:
    """The input widths `model` (an AceStepTransformer1DModel) takes, read from its config."""
    c = model.config
    latent = c.audio_acoustic_hidden_dim
    return Widths(latent, c.in_channels - latent, c.encoder_hidden_size or c.hidden_size)


@functools.lru_cache(maxsize=None)
def tiny_widths() -> Widths:
    """The input widths of the tiny DiT (read from the model that the configured sizes build)."""
    return widths(tiny_transformer())


def make_base_model(root: Path, variant: str = "turbo", seed: int = 0) -> Path:
    """A base-model folder as stage base_model writes it, with only the parts training reads."""
    from safetensors.torch import save_file

    from lofi_lora.model.load import files_record
    from lofi_lora.core.fsutil import atomic_write_json

    base = root / "base"
    transformer = tiny_transformer(seed, variant)
    transformer.save_pretrained(str(base / "transformer"), safe_serialization=True)
    (base / "condition_encoder").mkdir(parents=True)
    g = torch.Generator().manual_seed(seed + 1)
    save_file({"null_condition_emb": torch.randn(1, 1, widths(transformer).cond, generator=g)},
              str(base / "condition_encoder" / "diffusion_pytorch_model.safetensors"))
    files = files_record(base)
    atomic_write_json(base / "manifest.json", {"version": 1, "name": "tiny", "source": "build", "variant": variant,
                                               "weights_dir": None, "files": files, "fingerprint": "test"})
    return base


def make_cache(root: Path, n_clips: int = 6, repeat: int = 1, seed: int = 0) -> tuple[Path, Path]:
    """Seeded random cache entries of unequal lengths, at the tiny DiT's widths, + a DatasetDict(train, holdout)
    with a clip_id column."""
    from datasets import Dataset, DatasetDict
    from safetensors.torch import save_file

    from lofi_lora.core.fsutil import atomic_write_json, sha256_file

    cache, dataset = root / "data" / "cache", root / "data" / "dataset"
    cache.mkdir(parents=True)
    w = tiny_widths()
    latent_c, cond_h = w.latent, w.cond
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


# The train keys the toy runs change from conf/train/tiny.yaml: a dozen steps, checkpoints every 5
SHRUNK_TRAIN = dict(max_steps=12, lr=3e-3, warmup_steps=2, checkpoint_every=5, keep_last=2)


def train_config(root: Path, base: Path, dataset: Path, cache: Path, *, variant: str = "turbo", **train):
    """The real configuration on the toy base model and cache, with SHRUNK_TRAIN and `train` overrides."""
    return real_config(root, model={"path": str(base), "variant": variant, "source": "build"},
                       paths={"dataset": str(dataset), "cache": str(cache), "base_model": str(base),
                              "lora": str(root / "models" / "lora"), "metrics": str(root / "metrics")},
                       train={**SHRUNK_TRAIN, **train})


def workspace(root: Path, variant: str = "turbo", n_clips: int = 6, **train):
    base = make_base_model(root, variant)
    dataset, cache = make_cache(root, n_clips)
    return train_config(root, base, dataset, cache, variant=variant, **train)


def dit_inputs():
    """Seeded inputs of one DiT call at the tiny DiT's widths (batch 2, 14 frames, 6 condition tokens)."""
    w, g = tiny_widths(), torch.Generator().manual_seed(3)
    t = torch.tensor([0.75, 0.3])
    return dict(hidden_states=torch.randn(2, 14, w.latent, generator=g), timestep=t, timestep_r=t,
                encoder_hidden_states=torch.randn(2, 6, w.cond, generator=g),
                context_latents=torch.randn(2, 14, w.context, generator=g))


def adapter_pipeline():
    """diffusers' real AceStepPipeline around a fresh copy of the base DiT (load_lora_weights needs only that)."""
    from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler

    return AceStepPipeline(vae=None, text_encoder=None, tokenizer=None, transformer=tiny_transformer(0),
                           condition_encoder=None, scheduler=FlowMatchEulerDiscreteScheduler())
