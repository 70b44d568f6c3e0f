"""What a LoRA training run holds between steps, the step itself, and the checkpoint that saves and restores it.

`train_step` is the whole optimizer step (micro-batches, backward, clip, AdamW, schedule): stage train runs it and
benchmarks/train_step.py times it, so the benchmark measures exactly what the stage runs.

Determinism: data order is a pure function of (seed, epoch), all sampling uses one torch.Generator whose state is
checkpointed with the global RNG states (LoRA dropout), so a CPU run resumed after SIGKILL ends bitwise equal to
an uninterrupted run (tests/test_train_resume.py).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lofi_lora.train import adapters

from lofi_lora.train import speed as train_speed
from lofi_lora.train.checkpoints import STATE_FILE, CheckpointStore
from lofi_lora.dataset.stage import CACHE_KEYS
from lofi_lora.core.errors import CheckpointError, ConfigError, ModelError
from lofi_lora.train.objective import Objective

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# data order and batches
# --------------------------------------------------------------------------------------------------------------

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
# the LoRA, the optimizer and the schedule
# --------------------------------------------------------------------------------------------------------------

def adapter_kind(adapter_cfg) -> dict[str, Any]:
    """The adapter type and its own keys (`adapter` section; None = plain LoRA), as the adapter writers take them."""
    if adapter_cfg is None:
        return {"adapter_type": "lora", "lokr": None}
    lokr = adapter_cfg.get("lokr")
    return {"adapter_type": str(adapter_cfg.type), "lokr": dict(lokr) if lokr is not None else None}


def add_lora(model: torch.nn.Module, lora_cfg, adapter_cfg=None) -> int:
    """Inject the adapter of `adapter_cfg` (LoRA when None) shaped by `lora_cfg` (diffusers module names), freeze
    the rest; returns the trainable count."""
    targets = list(lora_cfg.target_modules)
    try:
        return adapters.inject_lora(model, r=int(lora_cfg.r), alpha=float(lora_cfg.alpha), rslora=bool(lora_cfg.rslora),
                                    dropout=float(lora_cfg.dropout), target_modules=targets, **adapter_kind(adapter_cfg))
    except ModelError as e:
        raise ConfigError(str(e)) from e
    except ValueError as e:
        raise ConfigError(f"lora.target_modules={targets}: {e}") from e


def lora_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Trainable adapter parameters (LoRA, DoRA, LoKr) keyed like `adapter_state_dict` (adapter name removed)."""
    out = {}
    for n, p in model.named_parameters():
        if adapters.is_adapter_param(n) and (k := adapters.canonical_key(n)) is not None:
            out[k] = p
    return out


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors as fp32 CPU copies (what adapter files hold)."""
    return {k: p.detach().to("cpu", torch.float32).clone() for k, p in lora_params(model).items()}


def load_lora_weights_exact(model: torch.nn.Module, adapter_file: Path) -> None:
    """Copy an unbaked checkpoint adapter file into the training model bit for bit."""
    from safetensors.torch import load_file

    if adapters.read_info(adapter_file.parent).get("baked", False):
        raise CheckpointError(f"{adapter_file}: holds scale-baked weights (a final/best adapter), not a checkpoint")
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(adapter_file)).items()}
    params = lora_params(model)
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
    warmup, total = int(train_cfg.warmup_steps), int(train_cfg.max_steps)
    kind, floor = str(train_cfg.schedule), float(train_cfg.min_lr_ratio)

    def factor(step: int) -> float:  # `step` = optimizer steps taken so far
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return floor + (1 - floor) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(model: torch.nn.Module, train_cfg, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(lora_params(model).values()), lr=float(train_cfg.lr),
                             betas=tuple(float(b) for b in train_cfg.betas), weight_decay=float(train_cfg.weight_decay),
                             fused=device.type == "cuda")


# --------------------------------------------------------------------------------------------------------------
# state and step
# --------------------------------------------------------------------------------------------------------------

@dataclass
class TrainState:
    """The model being trained and what advances with it; `forward` is the module the loss calls (DDP or model)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    order: BatchOrder
    objective: Objective
    forward: torch.nn.Module | None = None
    compile_mode: str | None = None     # the torch.compile mode, when compiled (CUDA graphs need a step mark)
    step: int = 0
    params: list[torch.nn.Parameter] = field(default_factory=list)
    ema_decay: float = 0.0              # train.ema_decay; 0 = no EMA
    ema_device: str = "device"          # train.ema_device: "device" (next to the params) or "cpu"
    ema: list[torch.Tensor] = field(default_factory=list)   # EMA of `params`, same order

    def __post_init__(self) -> None:
        self.forward = self.forward or self.model
        self.params = self.params or list(lora_params(self.model).values())
        if self.ema_decay > 0 and not self.ema:
            where = "cpu" if self.ema_device == "cpu" else self.params[0].device
            self.ema = [p.detach().to(where, torch.float32, copy=True) for p in self.params]


def update_ema(state: TrainState) -> None:
    """ema <- decay * ema + (1 - decay) * param, after each optimizer step. On the device: one fused op, no host
    sync; on the CPU: a copy of the adapter per step (a host sync), which frees device memory."""
    if not state.ema:
        return
    weight = 1.0 - state.ema_decay
    with torch.no_grad():
        if state.ema[0].device == state.params[0].device:
            torch._foreach_lerp_(state.ema, [p.detach() for p in state.params], weight)
        else:
            for e, p in zip(state.ema, state.params):
                e.lerp_(p.detach().to(e.device, torch.float32), weight)


def ema_state(state: TrainState) -> dict[str, torch.Tensor]:
    """The EMA adapter as fp32 CPU copies keyed like `adapter_state` (empty without EMA)."""
    if not state.ema:
        return {}
    return {k: e.detach().to("cpu", torch.float32).clone() for k, e in zip(lora_params(state.model), state.ema)}


def train_step(state: TrainState, micro_batches: list[dict[str, torch.Tensor]], max_grad_norm: float,
               ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """One optimizer step over `micro_batches` (gradient accumulation); no host sync.

    Returns (mean loss, grad norm before clipping, lr used, valid latent frames), tensors left on the device.
    """
    state.optimizer.zero_grad(set_to_none=True)
    device = state.params[0].device
    loss_sum, frames_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    train_speed.step_begin(state.compile_mode)  # grads of all micro-steps stay live
    n = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        sync_grads = i == n - 1 or state.forward is state.model  # DDP (a wrapper) all-reduces on the last only
        with contextlib.nullcontext() if sync_grads else state.forward.no_sync():
            loss, frames = state.objective(state.forward, batch, state.gen)
            (loss / n).backward()
        loss_sum += loss.detach()
        frames_sum += frames
    grad_norm = torch.nn.utils.clip_grad_norm_(state.params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    state.scheduler.step()
    update_ema(state)
    state.step += 1
    return loss_sum / n, grad_norm, lr, frames_sum


def next_micro_batches(state: TrainState, clips: list[dict[str, torch.Tensor]], grad_accum: int, rank: int,
                       world_size: int, pad_multiple: int) -> list[dict[str, torch.Tensor]]:
    """The next `grad_accum` batches of this rank, on the device: each global batch is split across ranks."""
    device = state.params[0].device
    out = []
    for _ in range(grad_accum):
        idx = state.order.next()
        idx = idx[rank::world_size] or [idx[rank % len(idx)]]
        out.append({k: v.to(device, non_blocking=True) for k, v in collate([clips[i] for i in idx], pad_multiple).items()})
    return out


# --------------------------------------------------------------------------------------------------------------
# checkpoint: save and restore
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


@dataclass
class CheckpointInfo:
    """What a checkpoint records beside the train state: the run's identity, adapter shape and retention."""

    config_hash: str
    lora_info: dict[str, Any]
    keep_last: int


def save_checkpoint(state: TrainState, store: CheckpointStore, info: CheckpointInfo, metrics: Any,
                    rng_ranks: list[dict]) -> None:
    """`checkpoint-<step>`: unbaked adapter + optimizer, scheduler, RNG, data position and the smoothed loss
    (`metrics`: a `train_log.MetricsBuffer`), written by the main rank.

    `rng_ranks` is every rank's `rng_state`, gathered by the caller (a collective all ranks take part in).
    """
    step = state.step

    def write(tmp: Path) -> None:
        adapters.save_diffusers_adapter(adapter_state(state.model), tmp, bake=False, **info.lora_info,
                                        extra_info={"step": step, "config_hash": info.config_hash})
        if state.ema:  # the EMA adapter, for evaluate (eval.ema); its exact state also goes into the state file
            adapters.save_diffusers_adapter(ema_state(state), tmp, bake=False, **info.lora_info,
                                            weight_name=adapters.EMA_WEIGHT_NAME,
                                            extra_info={"step": step, "config_hash": info.config_hash, "ema": True,
                                                        "ema_decay": state.ema_decay})
        saved = {"step": step, "ema_loss": metrics.ema_loss, "last": dict(metrics.last),
                 "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                 "rng": rng_ranks[0], "data": state.order.state_dict(), "config_hash": info.config_hash}
        if len(rng_ranks) > 1:
            saved["rng_ranks"] = rng_ranks
        if state.ema:
            saved["ema"] = ema_state(state)
        torch.save(saved, tmp / STATE_FILE)

    scores = {"train_loss": metrics.ema_loss} if metrics.ema_loss is not None else {}
    store.save(step, write, info.config_hash, scores, info.keep_last)


def restore_checkpoint(state: TrainState, ckdir: Path, rank: int | None) -> dict[str, Any]:
    """Load `ckdir` into `state` (rank: this rank under data parallel, else None); returns the saved metrics state
    (`ema_loss`, `last`)."""
    load_lora_weights_exact(state.model, ckdir / adapters.DIFFUSERS_WEIGHT_NAME)
    saved = torch.load(ckdir / STATE_FILE, map_location="cpu", weights_only=True)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng_ranks"][rank] if rank is not None else saved["rng"], state.gen)
    state.order.load_state_dict(saved["data"])
    state.step = int(saved["step"])
    if state.ema:
        if "ema" not in saved:
            raise CheckpointError(f"{ckdir}: holds no EMA of the adapter but train.ema_decay > 0")
        with torch.no_grad():
            for e, k in zip(state.ema, lora_params(state.model)):
                e.copy_(saved["ema"][k])
    log.info("resuming from %s (step %d)", ckdir.name, state.step)
    return {"ema_loss": saved.get("ema_loss"), "last": dict(saved.get("last") or {})}
