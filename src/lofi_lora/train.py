"""Stage `train`: PEFT LoRA on the ACE-Step 1.5 DiT over cached latents and conditions, with exact resume.

Loss (flow matching, as upstream 1.5 trains; shared/notes/ace-step.md §0.3 and §2.2). We follow, without
copying, ace-step/ACE-Step-1.5 `acestep/training/trainer.py` (`PreprocessedLoRAModule.training_step`, f30aee4) and
the model's own training forward as reimplemented by Side-Step "fixed" mode (koda-dernet/Side-Step
`acestep/training_v2/fixed_lora_module.py`, `timestep_sampling.py`):
    x0 = data latents, x1 = noise, x_t = t*x1 + (1-t)*x0, target velocity v = x1 - x0,
    prediction = DiT(hidden_states=x_t, timestep=t, timestep_r=t, encoder_hidden_states, context_latents).
Timesteps (`train.timesteps=auto` picks per `model.variant`): turbo -> uniform over upstream's 8 discrete shift-3
turbo timesteps (`TURBO_SHIFT3_TIMESTEPS`, the values turbo inference visits); base/sft -> logit-normal,
t = sigmoid(N(logit_mean, logit_std)) with mu=-0.4, sigma=1.0 (the model's own `sample_t_r` with r = t).
Condition dropout (`train.cfg_dropout`; `auto` = 0.15 for base/sft as in the model's forward, 0 for turbo, which
upstream trains and samples without CFG): per clip, encoder_hidden_states -> null_condition_emb broadcast.

Masking (our choice, documented): upstream's decoder accepts `attention_mask`/`encoder_attention_mask` but
discards them, and diffusers' `AceStepTransformer1DModel` takes no masks at all, so padding is visible to attention
in both. We (1) batch clips of similar length together (`train.bucket_by_length`) so little padding exists, and
(2) average the squared error only over valid latent frames (`attention_mask`), where upstream's plain MSE also
trains the model to predict velocity on padded frames. With batch size 1 and unpadded clips the two are equal.

Determinism: data order is a pure function of (seed, epoch), all sampling uses one torch.Generator whose state is
checkpointed with the global RNG states (LoRA dropout), so a CPU run resumed after SIGKILL ends bitwise equal to
an uninterrupted run (tests/test_train_resume.py).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lofi_lora import adapters
from lofi_lora.checkpoints import STATE_FILE, CheckpointStore
from lofi_lora.config import fingerprint, require, to_plain
from lofi_lora.errors import CheckpointError, ConfigError, DataError, ModelError
from lofi_lora.fsutil import atomic_dir, atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

# Upstream's turbo inference schedule (8 steps, shift 3): t_i = 3s/(1+2s) for s = 1, 7/8, ..., 1/8.
TURBO_SHIFT3_TIMESTEPS = tuple(3 * s / (1 + 2 * s) for s in (8 / 8, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8))
# train keys that may change between a run and its resume without changing what is learned step by step
RESUME_SAFE_KEYS = ("max_steps", "checkpoint_every", "keep_last", "resume_from", "log_every", "cpu_threads",
                    "compile", "compile_mode", "activation_memory_budget",  # how the step runs, not what it learns
                    "data_on_device", "distributed")
CACHE_KEYS = ("target_latents", "attention_mask", "encoder_hidden_states", "encoder_attention_mask",
              "context_latents")
SCHEMES = ("discrete_turbo", "logit_normal", "uniform")
EMA_BETA = 0.9  # smoothing of the train loss recorded in checkpoint scores


# --------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------

def load_corpus(dataset_dir: str | Path, cache_dir: str | Path) -> tuple[list[str], list[dict[str, torch.Tensor]], str]:
    """Train-split clip ids (repeats included), their cached tensors, and a hash of the exact data trained on."""
    from datasets import load_from_disk
    from safetensors.torch import load_file

    dataset_dir, cache_dir = Path(dataset_dir), Path(cache_dir)
    if not dataset_dir.exists():
        raise DataError(f"{dataset_dir}: dataset is missing; run stage dataset first (`dvc repro dataset`)")
    ds = load_from_disk(str(dataset_dir))
    if "train" not in ds or "clip_id" not in ds["train"].column_names:
        raise DataError(f"{dataset_dir}: expected a DatasetDict with a `train` split and a `clip_id` column")
    clip_ids = [str(c) for c in ds["train"]["clip_id"]]
    if not clip_ids:
        raise DataError(f"{dataset_dir}: the train split is empty")
    manifest_path = cache_dir / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    records = manifest.get("clips", manifest) if isinstance(manifest, dict) else {}
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    digests: dict[str, str] = {}
    for cid in sorted(set(clip_ids)):
        rec = records.get(cid) if isinstance(records, dict) else None
        path = cache_dir / (Path(rec["file"]).name if isinstance(rec, dict) and rec.get("file") else f"{cid}.safetensors")
        if not path.is_file():
            raise DataError(f"{path}: cache entry of clip {cid!r} is missing; run stage dataset again")
        digest = sha256_file(path)
        if isinstance(rec, dict) and rec.get("sha256") and rec["sha256"] != digest:
            raise DataError(f"{path}: sha256 differs from {manifest_path} (cache corrupt); run stage dataset again")
        t = load_file(str(path))
        missing = [k for k in CACHE_KEYS if k not in t]
        if missing:
            raise DataError(f"{path}: missing keys {missing} (cache format: {list(CACHE_KEYS)})")
        n = t["target_latents"].shape[0]
        if t["attention_mask"].shape[0] != n or t["context_latents"].shape[0] != n:
            raise DataError(f"{path}: target_latents, attention_mask and context_latents differ in length")
        tensors[cid], digests[cid] = t, digest
    data_hash = fingerprint({"clips": clip_ids, "sha256": digests})
    return clip_ids, [tensors[c] for c in clip_ids], data_hash


def collate(items: list[dict[str, torch.Tensor]], multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad clips of unequal length with zeros (latents) / False (masks) to the longest in the batch, rounded up to
    `multiple` (`train.pad_multiple`): few distinct shapes, so CUDA graphs are recorded a few times, not per batch."""
    out: dict[str, torch.Tensor] = {}
    for key in CACHE_KEYS:
        seqs = [it[key] for it in items]
        n = -(-max(s.shape[0] for s in seqs) // multiple) * multiple
        padded = []
        for s in seqs:
            s = s.float() if key.endswith("mask") else s
            pad = s.new_zeros((n - s.shape[0], *s.shape[1:]))
            padded.append(torch.cat([s, pad], dim=0))
        out[key] = torch.stack(padded)
    return out


class BatchOrder:
    """Deterministic epochs: the order of epoch e is a function of (seed, e) only, so the position is the state."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket_by_length: bool):
        self.lengths, self.batch_size, self.seed, self.bucket = lengths, batch_size, seed, bucket_by_length
        self.epoch, self.index = 0, 0
        self._batches: list[list[int]] | None = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if self.bucket and self.batch_size > 1:  # sort inside windows of 8 batches: less padding, still shuffled
            window = self.batch_size * 8
            order = [i for w in range(0, len(order), window)
                     for i in sorted(order[w:w + window], key=lambda j: -self.lengths[j])]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.bucket and self.batch_size > 1:  # keep batch order random after sorting
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def next(self) -> list[int]:
        if self._batches is None:
            self._batches = self._epoch_batches(self.epoch)
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._epoch_batches(self.epoch)
        batch = self._batches[self.index]
        self.index += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index, self._batches = int(state["epoch"]), int(state["index"]), None


# --------------------------------------------------------------------------------------------------------------
# flow-matching objective
# --------------------------------------------------------------------------------------------------------------

def timestep_scheme(train_cfg, variant: str) -> str:
    scheme = str(train_cfg.get("timesteps", "auto"))
    if scheme == "auto":
        return "discrete_turbo" if variant == "turbo" else "logit_normal"
    if scheme not in SCHEMES:
        raise ConfigError(f"train.timesteps={scheme!r}: expected auto or one of {SCHEMES}")
    return scheme


def cfg_dropout_ratio(train_cfg, variant: str) -> float:
    value = train_cfg.get("cfg_dropout", "auto")
    if value == "auto":
        return 0.0 if variant == "turbo" else 0.15
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"train.cfg_dropout={value}: expected auto or a probability in [0, 1)")
    return value


@functools.lru_cache(maxsize=None)
def _turbo_table(device: torch.device) -> torch.Tensor:
    """The turbo timesteps on `device`, made once: a host-to-GPU copy from a Python list waits for the GPU queue to
    drain, and once per step it kept the host from queueing the next step (seen in the H100 profile)."""
    return torch.tensor(TURBO_SHIFT3_TIMESTEPS, dtype=torch.float32, device=device)


def sample_timesteps(scheme: str, n: int, gen: torch.Generator, device: torch.device,
                     logit_mean: float = -0.4, logit_std: float = 1.0) -> torch.Tensor:
    if scheme == "discrete_turbo":
        table = _turbo_table(torch.device(device))
        return table[torch.randint(0, len(table), (n,), generator=gen, device=device)]
    if scheme == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=gen, device=device) * logit_std + logit_mean)
    return torch.rand(n, generator=gen, device=device)


def flow_matching_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator, *,
                       scheme: str, logit_mean: float, logit_std: float, cfg_ratio: float,
                       null_condition: torch.Tensor | None, autocast: contextlib.AbstractContextManager) -> tuple[torch.Tensor, int]:
    """Masked flow-matching MSE of one batch; returns (loss, number of valid latent frames)."""
    loss, frames = flow_matching_loss_async(model, batch, gen, scheme=scheme, logit_mean=logit_mean,
                                            logit_std=logit_std, cfg_ratio=cfg_ratio, null_condition=null_condition,
                                            autocast=autocast)
    return loss, int(frames.item())


def flow_matching_loss_async(model: torch.nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator, *,
                             scheme: str, logit_mean: float, logit_std: float, cfg_ratio: float,
                             null_condition: torch.Tensor | None,
                             autocast: contextlib.AbstractContextManager) -> tuple[torch.Tensor, torch.Tensor]:
    """`flow_matching_loss` with the frame count left on the device: no host sync inside the train step."""
    x0 = batch["target_latents"]
    device, bsz = x0.device, x0.shape[0]
    cond = batch["encoder_hidden_states"]
    if cfg_ratio > 0:
        if null_condition is None:
            raise ModelError("train.cfg_dropout > 0 but the base model has no null_condition_emb")
        drop = torch.rand(bsz, generator=gen, device=device) < cfg_ratio
        cond = torch.where(drop.view(-1, 1, 1), null_condition.to(cond).expand_as(cond), cond)
    t = sample_timesteps(scheme, bsz, gen, device, logit_mean, logit_std)
    x1 = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
    t_ = t.view(-1, 1, 1)
    xt = t_ * x1 + (1.0 - t_) * x0
    with autocast:
        pred = model(hidden_states=xt, timestep=t, timestep_r=t, encoder_hidden_states=cond,
                     context_latents=batch["context_latents"], return_dict=False)[0]
    mask = batch["attention_mask"].to(torch.float32).unsqueeze(-1)
    sq = (pred.float() - (x1 - x0).float()).pow(2) * mask
    frames = mask.sum()
    loss = sq.sum() / (frames * x0.shape[-1]).clamp(min=1.0)
    return loss, frames


# --------------------------------------------------------------------------------------------------------------
# model, optimiser, schedule
# --------------------------------------------------------------------------------------------------------------

def add_lora(model: torch.nn.Module, lora_cfg) -> int:
    """Inject the LoRA of `lora_cfg` (diffusers module names), freeze the rest; returns the trainable count."""
    targets = list(require(lora_cfg, "target_modules"))
    try:
        return adapters.inject_lora(model, r=int(require(lora_cfg, "r")), alpha=float(require(lora_cfg, "alpha")),
                                    rslora=bool(lora_cfg.get("rslora", False)),
                                    dropout=float(lora_cfg.get("dropout", 0.0)), target_modules=targets)
    except ValueError as e:
        raise ConfigError(f"lora.target_modules={targets}: {e}") from e


def _lora_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Trainable LoRA parameters keyed like `adapter_state_dict` (adapter name removed)."""
    suffix = f".{adapters.ADAPTER_NAME}.weight"
    return {n[: -len(suffix)] + ".weight": p for n, p in model.named_parameters()
            if ".lora_" in n and n.endswith(suffix)}


def load_lora_weights_exact(model: torch.nn.Module, adapter_file: Path) -> None:
    """Copy an unbaked checkpoint adapter file into the training model bit for bit."""
    from safetensors.torch import load_file

    if adapters.read_info(adapter_file.parent).get("baked", False):
        raise CheckpointError(f"{adapter_file}: holds scale-baked weights (a final/best adapter), not a checkpoint")
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(adapter_file)).items()}
    params = _lora_params(model)
    if set(state) != set(params):
        raise CheckpointError(f"{adapter_file}: LoRA tensors do not match the model "
                              f"({len(set(state) ^ set(params))} keys differ)")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k])


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine / linear decay to `min_lr_ratio`, or constant.

    A LambdaLR computes the factor from the current config each step, so raising `max_steps` on resume stretches
    the decay instead of replaying the old schedule (max_steps is resume-safe).
    """
    warmup = int(train_cfg.get("warmup_steps", 0))
    total = int(require(train_cfg, "max_steps"))
    kind = str(train_cfg.get("schedule", "cosine"))
    floor = float(train_cfg.get("min_lr_ratio", 0.0))
    if kind not in ("cosine", "linear", "constant"):
        raise ConfigError(f"train.schedule={kind!r}: expected cosine, linear or constant")

    def factor(step: int) -> float:  # `step` = optimizer steps taken so far
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return floor + (1 - floor) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def config_hash(cfg, data_hash: str, world_size: int = 1) -> str:
    """Fingerprint of what one step learns: seed, model, lora, train minus resume-safe keys, the data, and the
    number of data-parallel ranks when more than one (each rank draws its own noise)."""
    train = {k: v for k, v in to_plain(cfg.train).items() if k not in RESUME_SAFE_KEYS}
    if world_size > 1:
        train["world_size"] = world_size
    return fingerprint({"seed": cfg.get("seed"), "model": to_plain(cfg.model), "lora": to_plain(cfg.lora),
                        "train": train, "data": data_hash})


def load_null_condition(model_cfg, base_model_path: str | Path) -> torch.Tensor | None:
    """`null_condition_emb` [1, 1, H] read straight from the condition encoder's weights (no VAE/text encoder)."""
    from safetensors import safe_open

    from lofi_lora import backend

    folder = backend.model_dir(model_cfg, base_model_path) / "condition_encoder"
    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "pt") as sf:
            if "null_condition_emb" in sf.keys():
                return sf.get_tensor("null_condition_emb").float().reshape(1, 1, -1)
    return None


# --------------------------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------------------------

def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """All RNG states as tensors/ints, so `torch.load(weights_only=True)` can read them back."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state(), "sampler": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    gen.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------------------------

class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint after the current step and exits."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        log.warning("received signal %d: saving a checkpoint after this step", signum)
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def _trim_history(live_dir: Path, last_step: int) -> None:
    """Drop DVCLive rows logged after the checkpoint we resume from (they are about to be redone)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[0].isdigit() and int(ln.split("\t")[0]) <= last_step]
        tsv.write_text("\n".join(keep) + "\n")


def _open_live(live_dir: Path, resumed_step: int | None):
    from dvclive import Live

    if resumed_step is not None:
        _trim_history(live_dir, resumed_step)
    live = Live(str(live_dir), dvcyaml=False, resume=resumed_step is not None, save_dvc_exp=False)
    return live


def run_train(cfg, step_callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train the LoRA of `cfg.lora` with `cfg.train` on the cached train split; write adapters and metrics.

    Optimizer step = batch_size x grad_accum x world_size clips (world_size = torchrun ranks, 1 without it); lr
    applies to that step as configured (no automatic scaling). On CUDA the step makes no host sync: losses and grad
    norms stay on the device and are read every `log_every` steps (and at checkpoints), in step order, so the
    smoothed loss and the logged values are the same as reading them every step.
    """
    from lofi_lora import backend, distributed, train_speed
    from lofi_lora.runtime import compute_dtype, pick_device, seed_everything, set_deterministic

    tcfg, lcfg, mcfg = cfg.train, cfg.lora, cfg.model
    paths = cfg.paths
    lora_root, metrics_root = Path(paths.lora), Path(paths.metrics)
    seed = int(cfg.get("seed", 0))
    max_steps = int(require(tcfg, "max_steps"))
    batch_size, grad_accum = int(require(tcfg, "batch_size")), int(tcfg.get("grad_accum", 1))
    pad_multiple = int(tcfg.get("pad_multiple", 1))
    if max_steps < 1 or batch_size < 1 or grad_accum < 1 or pad_multiple < 1:
        raise ConfigError("train.max_steps, train.batch_size, train.grad_accum and train.pad_multiple must be >= 1")
    ckpt_every = int(tcfg.get("checkpoint_every", 0)) or max_steps
    variant = str(mcfg.get("variant", "turbo"))
    scheme, cfg_ratio = timestep_scheme(tcfg, variant), cfg_dropout_ratio(tcfg, variant)
    ckpt_share = train_speed.checkpoint_share(tcfg.get("grad_checkpointing", False))

    world = distributed.setup(tcfg.get("distributed", "auto"))
    device = distributed.device_for(world) if world.active else torch.device(pick_device())
    dtype = compute_dtype(str(tcfg.get("precision", "auto")), device.type)
    set_deterministic(device.type)
    if device.type == "cpu" and tcfg.get("cpu_threads"):
        torch.set_num_threads(int(tcfg.cpu_threads))  # toy matmuls: extra threads only add contention
    weights_dtype = torch.float32 if dtype == torch.float32 else getattr(torch, str(mcfg.get("dtype", "bfloat16")))

    clip_ids, clips, data_hash = load_corpus(paths.dataset, paths.cache)
    chash = config_hash(cfg, data_hash, world.size)
    log.info("train: %d clips (%d unique), variant %s, timesteps %s, cfg_dropout %.2f, device %s/%s, ranks %d, "
             "hash %s", len(clips), len(set(clip_ids)), variant, scheme, cfg_ratio, device, dtype, world.size, chash)
    on_device = tcfg.get("data_on_device", "auto")
    if (on_device == "auto" and device.type == "cuda") or on_device is True:
        clips = [{k: v.to(device) for k, v in c.items()} for c in clips]  # the cache is small next to the model

    model = backend.load_transformer(mcfg, paths.base_model, device=device, dtype=weights_dtype)
    seed_everything(seed)  # LoRA init draws from the global RNG: same adapter init whoever calls us
    n_trainable = add_lora(model, lcfg)
    n_ckpt = train_speed.enable_selective_checkpointing(model, ckpt_share) if ckpt_share > 0 else 0
    scope, compile_mode = train_speed.compile_scope(tcfg.get("compile", False)), tcfg.get("compile_mode")
    if scope:
        log.info("attention layers through flex_attention (band mask) / plain SDPA: %s",
                 train_speed.use_fast_attention(model))  # the same attention, no dispatch in the graph
        train_speed.compile_model(model, scope, compile_mode, memory_budget=tcfg.get("activation_memory_budget"))
    model.train()
    null_cond = load_null_condition(mcfg, paths.base_model) if cfg_ratio > 0 else None
    if cfg_ratio > 0 and null_cond is None:
        raise ModelError(f"train.cfg_dropout={cfg_ratio}: the base model's condition encoder has no "
                         "null_condition_emb; set train.cfg_dropout=0")
    null_cond = null_cond.to(device) if null_cond is not None else None
    forward_model = distributed.wrap(model, world)
    if n_ckpt:
        log.info("activation checkpointing on %d of %d DiT blocks", n_ckpt, len(model.layers))

    params = list(_lora_params(model).values())
    betas = tuple(float(b) for b in tcfg.get("betas", (0.9, 0.999)))
    optimizer = torch.optim.AdamW(params, lr=float(require(tcfg, "lr")), betas=betas,
                                  weight_decay=float(tcfg.get("weight_decay", 0.0)),
                                  fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, tcfg)
    gen = torch.Generator(device=device).manual_seed(seed + 7919 * world.rank)
    order = BatchOrder([c["target_latents"].shape[0] for c in clips], batch_size * world.size, seed,
                       bool(tcfg.get("bucket_by_length", True)))
    lora_info = dict(r=int(lcfg.r), alpha=float(lcfg.alpha), rslora=bool(lcfg.get("rslora", False)),
                     dropout=float(lcfg.get("dropout", 0.0)), target_modules=list(lcfg.target_modules))

    # -- resume -------------------------------------------------------------------------------------------------
    store = CheckpointStore(lora_root / "checkpoints")
    resume_from = tcfg.get("resume_from")
    entry = store.select(chash, None if resume_from is None else int(resume_from), max_step=max_steps)
    step, ema_loss, resumed_from, resumed_last = 0, None, None, {}
    if entry is not None:
        ckdir = store.root / Path(entry["path"]).name
        load_lora_weights_exact(model, ckdir / adapters.DIFFUSERS_WEIGHT_NAME)
        state = torch.load(ckdir / STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng_ranks"][world.rank] if world.active else state["rng"], gen)
        order.load_state_dict(state["data"])
        step, ema_loss, resumed_from = int(state["step"]), state.get("ema_loss"), int(state["step"])
        resumed_last = dict(state.get("last") or {})  # a run resumed at its end still reports its last step
        log.info("resuming from %s (step %d)", ckdir.name, step)
    else:
        log.info("fresh start (no resumable checkpoint for config %s)", chash)
    distributed.barrier(world)  # every rank has read the checkpoint before rank 0 may delete any
    if world.is_main:
        dropped = store.discard(chash, after_step=step)
        if dropped:
            log.warning("deleted %d checkpoint(s) of another config or after step %d", dropped, step)

    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    max_grad_norm = float(tcfg.get("max_grad_norm") or 0.0)
    log_every = max(1, int(tcfg.get("log_every", 1)))
    keep_last = int(tcfg.get("keep_last", 2))
    logit_mean, logit_std = float(tcfg.get("logit_mean", -0.4)), float(tcfg.get("logit_std", 1.0))

    def save_checkpoint() -> None:
        rng_ranks = distributed.gather_objects(rng_state(gen), world)  # collective: every rank calls it

        def write(tmp: Path) -> None:
            adapters.save_diffusers_adapter(adapter_state(), tmp, bake=False, **lora_info,
                                            extra_info={"step": step, "config_hash": chash})
            state = {"step": step, "ema_loss": ema_loss, "last": dict(last), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": rng_ranks[0], "data": order.state_dict(),
                     "config_hash": chash}
            if world.active:
                state["rng_ranks"] = rng_ranks
            torch.save(state, tmp / STATE_FILE)

        if world.is_main:
            scores = {"train_loss": ema_loss} if ema_loss is not None else {}
            store.save(step, write, chash, scores, keep_last)
        distributed.barrier(world)

    def adapter_state() -> dict[str, torch.Tensor]:
        return {k: p.detach().to("cpu", torch.float32).clone() for k, p in _lora_params(model).items()}

    live = _open_live(metrics_root / "train", resumed_from) if world.is_main else None
    frames_total = torch.zeros((), device=device)
    t0, last = time.perf_counter(), resumed_last
    start_step = step
    pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []  # (step, loss, grad norm, lr) not yet read
    from tqdm import tqdm

    def flush(bar) -> None:
        """Read the pending step values (one host sync), in step order: ema, finiteness check, metrics."""
        nonlocal ema_loss, last
        if not pending:
            return
        values = torch.stack([torch.stack([l.float(), g.float()]) for _, l, g, _ in pending]).tolist()
        for (s, _, _, lr), (step_loss, grad_norm) in zip(pending, values):
            if not math.isfinite(step_loss):
                raise ModelError(f"train loss is {step_loss} at step {s}; lower train.lr")
            ema_loss = step_loss if ema_loss is None else EMA_BETA * ema_loss + (1 - EMA_BETA) * step_loss
            last = {"loss": step_loss, "lr": lr, "grad_norm": grad_norm}
            if live is not None and (s % log_every == 0 or s == max_steps):
                live.step = s
                for k, v in last.items():
                    live.log_metric(k, v)
                live.log_metric("loss_smoothed", ema_loss)
                live.next_step()
        pending.clear()
        bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")

    sync_every_step = device.type != "cuda" or step_callback is not None
    try:
        with _StopFlag() as stop, tqdm(total=max_steps, initial=step, desc="train", unit="step",
                                       disable=None if world.is_main else True) as bar:
            while step < max_steps:
                optimizer.zero_grad(set_to_none=True)
                loss_sum = torch.zeros((), device=device)
                train_speed.step_begin(compile_mode if scope else None)  # grads of all micro-steps stay live
                for micro in range(grad_accum):
                    idx = order.next()
                    idx = idx[world.rank::world.size] or [idx[world.rank % len(idx)]]
                    batch = {k: v.to(device, non_blocking=True) for k, v in collate([clips[i] for i in idx], pad_multiple).items()}
                    sync_grads = micro == grad_accum - 1 or not world.active
                    with contextlib.nullcontext() if sync_grads else forward_model.no_sync():
                        loss, frames = flow_matching_loss_async(
                            forward_model, batch, gen, scheme=scheme, logit_mean=logit_mean, logit_std=logit_std,
                            cfg_ratio=cfg_ratio, null_condition=null_cond, autocast=autocast)
                        (loss / grad_accum).backward()
                    loss_sum += loss.detach()
                    frames_total += frames
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0
                                                           else float("inf"))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                step += 1
                pending.append((step, loss_sum / grad_accum, grad_norm, lr))
                bar.update(1)
                stopping = stop.signum is not None and step < max_steps
                if (sync_every_step or step % log_every == 0 or step % ckpt_every == 0 or step == max_steps
                        or stopping):
                    flush(bar)
                if step % ckpt_every == 0 or step == max_steps:
                    save_checkpoint()
                if step_callback is not None:
                    step_callback(step)
                if stop.signum is not None and step < max_steps:
                    flush(bar)
                    if step % ckpt_every != 0:
                        save_checkpoint()
                    log.warning("stopped by signal %d at step %d; checkpoint saved, resume by running again",
                                stop.signum, step)
                    raise SystemExit(128 + stop.signum)
    finally:
        if live is not None:
            live.end()

    wall_s = time.perf_counter() - t0
    frames_total = float(frames_total) * world.size  # every rank trains on about the same number of frames
    final_state = adapter_state()
    if world.is_main:
        with atomic_dir(lora_root / "final") as tmp:
            adapters.save_diffusers_adapter(final_state, tmp, bake=True, **lora_info,
                                            extra_info={"step": step, "config_hash": chash, "variant": variant,
                                                        "timesteps": scheme})
        base_ref = str(mcfg.get("hub_id") or mcfg.get("path") or mcfg.get("name"))
        adapters.save_peft_adapter(final_state, lora_root / "peft", base_model=base_ref, **lora_info)
        adapters.save_comfyui_folder(final_state, lora_root / "comfyui", variant=variant, **lora_info)

    steps_run = step - start_step
    result = {
        "final_loss": last.get("loss"), "train_loss_smoothed": ema_loss, "steps": step, "steps_run": steps_run,
        "resumed_from": resumed_from, "trainable_params": n_trainable, "clips": len(clips),
        "grad_norm": last.get("grad_norm"), "lr": last.get("lr"),
        "steps_per_s": steps_run / wall_s if steps_run else None,
        "tokens_per_s": frames_total / wall_s if steps_run else None,  # latent frames (25 Hz) per second
        "wall_s": wall_s, "config_hash": chash, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "timesteps": scheme, "cfg_dropout": cfg_ratio, "world_size": world.size,
    }
    if world.is_main:
        from lofi_lora.results import write_stage_metrics

        write_stage_metrics("train", metrics_root / "train.json", result)
    distributed.barrier(world)
    distributed.shutdown(world)
    headline = ("final_loss", "train_loss_smoothed", "steps", "steps_run", "resumed_from", "trainable_params",
                "steps_per_s", "tokens_per_s")
    log.info("train done: step %d, loss %.4f (smoothed %.4f), %.2f steps/s", step, last.get("loss", float("nan")),
             ema_loss or float("nan"), result["steps_per_s"] or 0.0)
    return {k: result[k] for k in headline}
