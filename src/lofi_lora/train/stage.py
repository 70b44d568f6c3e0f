"""Stage `train`: PEFT LoRA on the ACE-Step 1.5 DiT over cached latents and conditions, with exact resume.

The loss is `lofi_lora.train.objective` (flow matching as upstream 1.5 trains); the step, its state and checkpoints are
`lofi_lora.train.state`; metrics leave the device through `lofi_lora.train.log`. This module wires them into the
stage: the data, the model and its speed settings, resume, the loop, and the adapters and metrics it writes.

Batches: clips of similar length go together (`train.bucket_by_length`), so little padding exists (the DiT's
attention sees padding; the loss ignores it).
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lofi_lora.train import adapters
from lofi_lora.core.config import config_hash, to_plain
from lofi_lora.core.errors import ModelError
from lofi_lora.core.fsutil import atomic_dir
from lofi_lora.train.objective import Objective, cfg_dropout_ratio, timestep_scheme
from lofi_lora.train.state import (BatchOrder, CheckpointInfo, TrainState, adapter_kind, add_lora, adapter_state,
                                   build_optimizer, build_scheduler, ema_state, next_micro_batches, restore_checkpoint,
                                   rng_state, save_checkpoint, train_step)

log = logging.getLogger(__name__)

# train keys that may change between a run and its resume without changing what is learned step by step
RESUME_SAFE_KEYS = ("max_steps", "checkpoint_every", "keep_last", "resume_from", "log_every", "cpu_threads",
                    "compile", "compile_mode", "activation_memory_budget",  # how the step runs, not what it learns
                    "data_on_device", "distributed")
EMA_KEYS = ("ema_decay", "ema_device")  # in the hash only when EMA is on: runs without it keep their identity


def train_config_hash(cfg, data_hash: str, world_size: int = 1) -> str:
    """Hash of what one step learns: seed, model, lora, train minus resume-safe keys, the data, and the number of
    data-parallel ranks when more than one (each rank draws its own noise). Checkpoints of another hash are never
    resumed."""
    train = {k: v for k, v in to_plain(cfg.train).items() if k not in RESUME_SAFE_KEYS}
    if not train.get("ema_decay"):
        train = {k: v for k, v in train.items() if k not in EMA_KEYS}
    if train.get("base_weights") == "native":  # runs keep the hash they had before the option existed
        train.pop("base_weights")
    if world_size > 1:
        train["world_size"] = world_size
    what = {"seed": cfg.seed, "model": to_plain(cfg.model), "lora": to_plain(cfg.lora), "train": train,
            "data": data_hash}
    if cfg.adapter.type != "lora":  # LoRA runs keep the hash they had before adapter types existed
        what["adapter"] = to_plain(cfg.adapter)
    return config_hash(what)


def load_null_condition(model_cfg, base_model_path: str | Path) -> torch.Tensor | None:
    """`null_condition_emb` [1, 1, H] read straight from the condition encoder's weights (no VAE/text encoder)."""
    from safetensors import safe_open

    from lofi_lora.model.load import model_dir

    folder = model_dir(model_cfg, base_model_path) / "condition_encoder"
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            if "null_condition_emb" in sf.keys():
                return sf.get_tensor("null_condition_emb").float().reshape(1, 1, -1)
    return None


def load_train_clips(cfg) -> tuple[list[str], list[dict[str, torch.Tensor]], str]:
    """Train-split clip ids (repeats included), their cached tensors, and a hash of the exact data trained on."""
    from lofi_lora.dataset.stage import read_cache, split_clip_ids

    clip_ids = split_clip_ids(cfg.paths.dataset, "train")
    tensors, digests = read_cache(cfg.paths.cache, sorted(set(clip_ids)))
    return clip_ids, [tensors[c] for c in clip_ids], config_hash({"clips": clip_ids, "sha256": digests})


def build_state(cfg, clips: list[dict[str, torch.Tensor]], place, world) -> tuple[TrainState, int]:
    """The base DiT with a fresh LoRA (seeded), its speed settings, optimizer, schedule, sampler RNG and data order;
    returns the state and the number of trainable parameters."""
    from lofi_lora.model.load import load_transformer
    from lofi_lora.train import base_weights, distributed
    from lofi_lora.train import speed as train_speed
    from lofi_lora.core.runtime import seed_everything

    tcfg, device = cfg.train, place.device
    base_weights.check(tcfg.base_weights, cfg.adapter.type, device)
    model = load_transformer(cfg.model, cfg.paths.base_model, device=device, dtype=place.weights_dtype)
    base_weights.quantize_blocks(model, tcfg.base_weights)
    seed_everything(cfg.seed)  # LoRA init draws from the global RNG: same adapter init whoever calls us
    n_trainable = add_lora(model, cfg.lora, cfg.adapter)
    share = train_speed.checkpoint_share(tcfg.grad_checkpointing)
    if share > 0:
        log.info("activation checkpointing on %d of %d DiT blocks",
                 train_speed.enable_selective_checkpointing(model, share), len(model.layers))
    scope = train_speed.compile_scope(tcfg.compile)
    if scope:
        log.info("attention layers through flex_attention (band mask) / plain SDPA: %s",
                 train_speed.use_fast_attention(model))  # the same attention, no dispatch in the graph
        train_speed.compile_model(model, scope, tcfg.compile_mode, memory_budget=tcfg.activation_memory_budget)
    model.train()
    adapters.skip_idle_lokr_dropout(model)  # LoKr at dropout 0: no per-layer draw, one graph under compile
    variant = cfg.model.variant
    cfg_ratio = cfg_dropout_ratio(tcfg.cfg_dropout, variant)
    null_cond = load_null_condition(cfg.model, cfg.paths.base_model) if cfg_ratio > 0 else None
    if cfg_ratio > 0 and null_cond is None:
        raise ModelError(f"train.cfg_dropout={cfg_ratio}: the base model's condition encoder has no "
                         "null_condition_emb; set train.cfg_dropout=0")
    autocast = torch.autocast(device_type=device.type, dtype=place.compute_dtype) \
        if place.compute_dtype != torch.float32 else contextlib.nullcontext()
    scheme = timestep_scheme(tcfg.timesteps, variant, cfg.model.train_timesteps)
    objective = Objective(scheme, tcfg.logit_mean, tcfg.logit_std, cfg_ratio,
                          null_cond.to(device) if null_cond is not None else None, autocast)
    forward = distributed.wrap(model, world)
    optimizer = build_optimizer(model, tcfg, device)
    state = TrainState(model, optimizer, build_scheduler(optimizer, tcfg),
                       torch.Generator(device=device).manual_seed(cfg.seed + 7919 * world.rank),
                       BatchOrder([c["target_latents"].shape[0] for c in clips], tcfg.batch_size * world.size,
                                  cfg.seed, tcfg.bucket_by_length),
                       objective, forward=forward, compile_mode=tcfg.compile_mode if scope else None,
                       ema_decay=float(tcfg.ema_decay), ema_device=str(tcfg.ema_device))
    return state, n_trainable


def log_banner(cfg, clip_ids: list[str], n_trainable: int, world, place, objective: Objective, chash: str) -> None:
    """What this run will do, in the terms of diffusers' training scripts."""
    t = cfg.train
    total_batch = t.batch_size * t.grad_accum * world.size
    epochs = math.ceil(t.max_steps * total_batch / len(clip_ids))
    log.info("***** Running training *****\n  Num examples = %d (%d unique clips)\n  Num epochs = %d\n"
             "  Batch size per device = %d\n  Total train batch size (w. data parallel & accumulation) = %d\n"
             "  Gradient accumulation steps = %d\n  Total optimization steps = %d\n  Trainable parameters = %d\n"
             "  Variant %s, timesteps %s, cfg_dropout %.2f, device %s/%s, ranks %d, config hash %s",
             len(clip_ids), len(set(clip_ids)), epochs, t.batch_size, total_batch, t.grad_accum, t.max_steps,
             n_trainable, cfg.model.variant, objective.scheme, objective.cfg_ratio, place.device,
             place.compute_dtype, world.size, chash)


def lora_info(lora_cfg, adapter_cfg=None) -> dict[str, Any]:
    """The adapter shape and type recorded with every adapter file."""
    return dict(r=int(lora_cfg.r), alpha=float(lora_cfg.alpha), rslora=bool(lora_cfg.rslora),
                dropout=float(lora_cfg.dropout), target_modules=list(lora_cfg.target_modules),
                **adapter_kind(adapter_cfg))


def write_adapters(cfg, state: TrainState, chash: str) -> None:
    """`final/` (diffusers, scale baked in), `peft/` (upstream 1.5 PEFT folder) and `comfyui/` (one file, alpha per
    layer) from the trained adapter; with EMA also `final/ema_lora_weights.safetensors` (the EMA weights)."""
    lora_root, final_state, info = Path(cfg.paths.lora), adapter_state(state.model), lora_info(cfg.lora, cfg.adapter)
    extra = {"step": state.step, "config_hash": chash, "variant": cfg.model.variant, "timesteps": state.objective.scheme}
    with atomic_dir(lora_root / "final") as tmp:
        adapters.save_diffusers_adapter(final_state, tmp, bake=True, **info, extra_info=extra)
        if state.ema:  # beside it, the EMA adapter (same format; DVC tracks final/ whole)
            adapters.save_diffusers_adapter(ema_state(state), tmp, bake=True, **info,
                                            weight_name=adapters.EMA_WEIGHT_NAME,
                                            extra_info={**extra, "ema": True, "ema_decay": state.ema_decay})
    base_ref = str(cfg.model.hub_id or cfg.model.path or cfg.model.name)
    adapters.save_peft_adapter(final_state, lora_root / "peft", base_model=base_ref, **info)
    base_weights = adapters.dora_base_weights(state.model) if info["adapter_type"] == "dora" else None
    adapters.save_comfyui_folder(final_state, lora_root / "comfyui", variant=cfg.model.variant,
                                 base_weights=base_weights, **info)


def train_metrics(run: dict[str, Any], metrics, state: TrainState, place, world) -> dict[str, Any]:
    """metrics/train.json: what the run reached and how fast (`run`: counts and timings of the loop)."""
    steps_run, wall_s = run["steps_run"], run["wall_s"]
    last = metrics.last
    return {
        "final_loss": last.get("loss"), "train_loss_smoothed": metrics.ema_loss, "steps": state.step,
        "steps_run": steps_run, "resumed_from": run["resumed_from"], "trainable_params": run["trainable_params"],
        "clips": run["clips"], "grad_norm": last.get("grad_norm"), "lr": last.get("lr"),
        "steps_per_s": steps_run / wall_s if steps_run else None,
        "tokens_per_s": run["frames"] / wall_s if steps_run else None,  # latent frames (25 Hz) per second
        "wall_s": wall_s, "config_hash": run["config_hash"], "device": str(place.device),
        "dtype": str(place.compute_dtype).replace("torch.", ""), "timesteps": state.objective.scheme,
        "cfg_dropout": state.objective.cfg_ratio, "world_size": world.size, "loop": run["loop"],
    }


def checkpoint(state: TrainState, store, info: CheckpointInfo, metrics, world) -> None:
    """Every rank's RNG state gathered (a collective all ranks call), the checkpoint written by the main rank,
    then all ranks wait for it."""
    from lofi_lora.train import distributed

    rng_ranks = distributed.gather_objects(rng_state(state.gen), world)
    if world.is_main:
        save_checkpoint(state, store, info, metrics, rng_ranks)
    distributed.barrier(world)


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


def run_train(cfg, step_callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train the LoRA of `cfg.lora` with `cfg.train` on the cached train split; write adapters and metrics.

    Optimizer step = batch_size x grad_accum x world_size clips (world_size = torchrun ranks, 1 without it); lr
    applies to that step as configured (no automatic scaling). On CUDA the step makes no host sync: values are
    read every `log_every` steps and at checkpoints (`MetricsBuffer`).
    """
    from tqdm import tqdm

    from lofi_lora.train import distributed
    from lofi_lora.train.checkpoints import CheckpointStore
    from lofi_lora.core.runtime import limit_cpu_threads, placement, set_deterministic
    from lofi_lora.train.log import LoopClock, MetricsBuffer, open_live

    tcfg, max_steps = cfg.train, cfg.train.max_steps
    ckpt_every = tcfg.checkpoint_every or max_steps
    world = distributed.setup(tcfg.distributed)
    place = placement(cfg.model.dtype, tcfg.precision, distributed.device_for(world) if world.active else None,
                      gpu_memory_gib=cfg.runtime.gpu_memory_gib)
    set_deterministic(place.device.type)
    limit_cpu_threads(place.device.type, tcfg.cpu_threads)
    clip_ids, clips, data_hash = load_train_clips(cfg)
    chash = train_config_hash(cfg, data_hash, world.size)
    if tcfg.data_on_device is True or (tcfg.data_on_device == "auto" and place.device.type == "cuda"):
        clips = [{k: v.to(place.device) for k, v in c.items()} for c in clips]  # the cache is small next to the model
    state, n_trainable = build_state(cfg, clips, place, world)
    log_banner(cfg, clip_ids, n_trainable, world, place, state.objective, chash)

    store = CheckpointStore(Path(cfg.paths.lora) / "checkpoints")
    entry = store.select(chash, tcfg.resume_from, max_step=max_steps)
    saved = {} if entry is None else restore_checkpoint(state, store.root / Path(entry["path"]).name,
                                                        world.rank if world.active else None)
    resumed_from = state.step if entry is not None else None
    distributed.must_agree("the data and config hash", chash, world,
                           "every node must read the same params.yaml and dataset/cache (a shared filesystem)")
    distributed.must_agree("the checkpoint to resume from", resumed_from, world,
                           f"every node must see the same {store.root} (a shared filesystem)")
    if entry is None:
        log.info("fresh start (no resumable checkpoint for config %s)", chash)
    distributed.barrier(world)  # every rank has read the checkpoint before rank 0 may delete any
    if world.is_main and (dropped := store.discard(chash, after_step=state.step)):
        log.warning("deleted %d checkpoint(s) of another config or after step %d", dropped, state.step)
    live = open_live(Path(cfg.paths.metrics) / "train", resumed_from) if world.is_main else None
    metrics = MetricsBuffer(live, max(1, tcfg.log_every), max_steps, saved.get("ema_loss"), saved.get("last"))

    info = CheckpointInfo(chash, lora_info(cfg.lora, cfg.adapter), tcfg.keep_last)
    frames_total, t0, start_step = torch.zeros((), device=place.device), time.perf_counter(), state.step
    sync_every_step = place.device.type != "cuda" or step_callback is not None
    clock = LoopClock(state.step)
    try:
        with _StopFlag() as stop, tqdm(total=max_steps, initial=state.step, desc="train", unit="step",
                                       disable=None if world.is_main else True) as bar:
            while state.step < max_steps:
                batches = next_micro_batches(state, clips, tcfg.grad_accum, world.rank, world.size, tcfg.pad_multiple)
                loss, grad_norm, lr, frames = train_step(state, batches, tcfg.max_grad_norm)
                frames_total += frames
                metrics.add(state.step, loss, grad_norm, lr)
                bar.update(1)
                step, at_checkpoint = state.step, state.step % ckpt_every == 0 or state.step == max_steps
                stopping = stop.signum is not None and step < max_steps
                if sync_every_step or step % metrics.log_every == 0 or at_checkpoint or stopping:
                    metrics.flush()
                    clock.mark(step)
                    bar.set_postfix(loss=f"{metrics.last['loss']:.4f}", lr=f"{metrics.last['lr']:.2e}")
                if at_checkpoint:
                    t_ckpt = time.perf_counter()
                    checkpoint(state, store, info, metrics, world)
                    clock.checkpoint(time.perf_counter() - t_ckpt, step)
                if step_callback is not None:
                    step_callback(step)
                stopping = stop.signum is not None and step < max_steps
                if world.active:  # every rank stops after the same step, decided where they sync anyway
                    synced = sync_every_step or step % metrics.log_every == 0 or at_checkpoint
                    stopping = synced and step < max_steps and distributed.any_rank(stopping, world)
                if stopping:
                    metrics.flush()
                    if step % ckpt_every != 0:
                        checkpoint(state, store, info, metrics, world)
                    signum = stop.signum or signal.SIGTERM  # a rank stopped because another one was signalled
                    log.warning("stopped by signal %d at step %d; checkpoint saved, resume by running again",
                                signum, step)
                    raise SystemExit(128 + signum)
    finally:
        if live is not None:
            live.end()

    run = {"steps_run": state.step - start_step, "wall_s": time.perf_counter() - t0, "resumed_from": resumed_from,
           "frames": float(frames_total) * world.size,  # every rank trains on about the same number of frames
           "trainable_params": n_trainable, "clips": len(clips), "config_hash": chash, "loop": clock.summary()}
    result = train_metrics(run, metrics, state, place, world)
    if world.is_main:
        write_adapters(cfg, state, chash)
        from lofi_lora.core.results import write_stage_metrics

        write_stage_metrics("train", Path(cfg.paths.metrics) / "train.json", result)
    distributed.barrier(world)
    distributed.shutdown(world)
    log.info("train done: step %d, loss %.4f (smoothed %.4f), %.2f steps/s", state.step,
             metrics.last.get("loss", float("nan")), metrics.ema_loss or float("nan"), result["steps_per_s"] or 0.0)
    return {k: result[k] for k in ("final_loss", "train_loss_smoothed", "steps", "steps_run", "resumed_from",
                                   "trainable_params", "steps_per_s", "tokens_per_s", "wall_s", "loop", "device")}
