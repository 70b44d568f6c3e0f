"""Data-parallel training through torchrun + DDP: one process per GPU, one config switch (`train.distributed`).

`torchrun --nproc-per-node N stages/train.py` sets WORLD_SIZE/RANK/LOCAL_RANK; with `train.distributed: auto` (or
true) the train stage then runs one DDP replica per GPU. Every optimizer step sees batch_size x grad_accum x
world_size clips (the global batch order is the single-GPU order with a world-size-times larger batch, each rank
taking every world_size-th clip of it); LoRA gradients are averaged across ranks by DDP, lr is not rescaled.
Rank 0 alone writes checkpoints, metrics and adapters; each rank's sampler RNG goes into the checkpoint so a resume
with the same world size is exact.

Several nodes (`torchrun --nnodes N --rdzv-backend c10d`, README "Several machines"): RANK is global and picks the
sampler seed and who writes; LOCAL_RANK picks the GPU. Every rank reads the checkpoint rank 0 wrote, so the nodes
must share `paths.lora` (a shared filesystem, like the data and the repo); `must_agree` stops a job whose nodes see
different checkpoints or data instead of letting it train on mismatched replicas, and `any_rank` makes a signal
that reached one node stop every rank after the same step.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from lofi_lora.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def setup(setting) -> World:
    """Join the torchrun process group when launched by torchrun and the config allows it."""
    setting = "auto" if setting is None else setting
    if setting not in ("auto", True, False, "off", "on"):
        raise ConfigError(f"train.distributed={setting!r}: expected auto, true or false")
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if setting in (False, "off") or size == 1:
        if size > 1:
            raise ConfigError("train.distributed=false but launched with WORLD_SIZE>1 (torchrun); set it to auto")
        return World()
    if setting in (True, "on") and size == 1:
        log.warning("train.distributed=true but not launched by torchrun: training on one device")
        return World()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    world = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)
    log.info("data parallel: rank %d of %d (local %d)", world.rank, world.size, world.local_rank)
    return world


def device_for(world: World) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The module the loss calls: DDP over the trainable LoRA parameters when data parallel, else the model."""
    if not world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [world.local_rank] if torch.cuda.is_available() else None
    return DDP(model, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True)


def gather_objects(obj, world: World) -> list:
    """Every rank's `obj`, in rank order (collective: all ranks must call it)."""
    if not world.active:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when `flag` is true on any (collective): a SIGTERM that reached one node stops all
    ranks after the same step, so the checkpoint's collectives line up."""
    if not world.active:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device_for(world))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def must_agree(what: str, value, world: World, hint: str) -> None:
    """Raise ConfigError unless every rank holds the same `value` (collective: all ranks must call it)."""
    seen = gather_objects(value, world)
    if any(v != seen[0] for v in seen):
        listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(seen))
        raise ConfigError(f"the ranks disagree on {what} ({listed}): {hint}")


def barrier(world: World) -> None:
    if world.active:
        import torch.distributed as dist

        dist.barrier()


def shutdown(world: World) -> None:
    if world.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
