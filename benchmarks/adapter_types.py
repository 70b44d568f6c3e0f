"""Stage train's step per adapter type (LoRA, DoRA, LoKr) and EMA placement: ms/step and peak memory (issue 27).

Full-size ACE-Step 1.5 DiT (diffusers AceStepTransformer1DModel default config, random weights), bf16 base, fp32
adapter on conf/lora's targets under bf16 autocast, the fast path of `lofi_lora.train.state.train_step` as
benchmarks/train_step.py runs it (regional torch.compile of the DiT block, fused AdamW, clip_grad_norm_, clips on the
GPU), conf/train/gpu.yaml's optimizer. Rows: each type without EMA, then with the EMA on the device and on the CPU.

    python benchmarks/adapter_types.py                  # GPU, full size
    python benchmarks/adapter_types.py --tiny           # CPU, toy size (a check of the code path)
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from lofi_lora.core.config import compose_config
from lofi_lora.train.adapters import skip_idle_lokr_dropout
from lofi_lora.train.objective import Objective
from lofi_lora.train.state import (BatchOrder, TrainState, add_lora, build_optimizer, build_scheduler, lora_params,
                                   train_step)
from train_step import TINY, dit_config, make_batch, prepare_project, timed

CONFIG = ["train=gpu", "lora.dropout=0.0"]


def run(kind: str, ema: str | None, a) -> tuple[float, float, int]:
    """(s/step, peak reserved GiB, trainable params) of one adapter type and EMA placement."""
    from diffusers import AceStepTransformer1DModel

    device = "cpu" if a.tiny else "cuda"
    torch._dynamo.reset()  # a fresh model per row: without this, dynamo's recompile limit falls back to eager
    cfg = compose_config([*CONFIG, f"adapter={kind}", f"lora.r={a.r}", f"lora.alpha={a.r}"])
    torch.manual_seed(0)
    with torch.device(device):
        m = AceStepTransformer1DModel(**(TINY if a.tiny else dit_config("2b")))
    if device == "cuda":
        m = m.to(torch.bfloat16)
    n = add_lora(m, cfg.lora, cfg.adapter)
    for p in lora_params(m).values():
        p.data = p.data.float()
    prepare_project(m, 0.0, not a.no_compile, device)
    skip_idle_lokr_dropout(m)  # as stage train's build_state
    batch = make_batch(m, a.batch, int(a.clip * 25), 320, device, 0)
    tcfg = cfg.train
    opt = build_optimizer(m, tcfg, torch.device(device))
    ac = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    state = TrainState(m, opt, build_scheduler(opt, tcfg), torch.Generator(device=device).manual_seed(0),
                       BatchOrder([batch["target_latents"].shape[1]] * a.batch, a.batch, 0, False),
                       Objective("discrete_turbo", tcfg.logit_mean, tcfg.logit_std, autocast=ac),
                       ema_decay=0.999 if ema else 0.0, ema_device=ema or "device")
    dt, (reserved, _) = timed(lambda: train_step(state, [batch], tcfg.max_grad_norm), device, a.steps, a.warm)
    del m, state, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return dt, reserved, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--types", nargs="+", default=["lora", "dora", "lokr"])
    ap.add_argument("--ema", nargs="+", default=["none", "device", "cpu"], help="EMA rows: none, device, cpu")
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--clip", type=float, default=30.0, help="clip seconds")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    name = "cpu (toy)" if a.tiny else torch.cuda.get_device_name()
    print(f"# {name}; torch {torch.__version__}; r={a.r}, {a.batch} x {a.clip:g} s clips, compile={not a.no_compile}")
    print("| adapter | EMA | trainable params | ms/step | peak reserved GiB |\n|---|---|---:|---:|---:|", flush=True)
    for kind in a.types:
        for ema in a.ema:
            dt, mem, n = run(kind, None if ema == "none" else ema, a)
            print(f"| {kind} | {ema} | {n:,} | {dt * 1e3:.1f} | {mem:.2f} |", flush=True)


if __name__ == "__main__":
    main()
