"""The project's train step next to the plain LoRA loop, same shapes, one run: ms/step, audio-s/s, MFU, peak memory.

Full-size ACE-Step 1.5 DiT (diffusers AceStepTransformer1DModel default config, 1.58 B params, random weights),
bf16 base, fp32 LoRA on to_q/to_k/to_v/to_out.0 under bf16 autocast, cached conditions (320 tokens).
- plain: the anchor loop (a plain diffusers LoRA loop): batch 1, eager, foreach AdamW, mse, all-or-nothing
  checkpointing.
- project: what stage train runs (`lofi_lora.train.state.train_step` with conf/train/gpu.yaml's optimizer and
  schedule): clips already on the GPU, several clips of one length bucket per step, regional torch.compile of the
  DiT block, masked flow-matching loss without host syncs, fused AdamW, clip_grad_norm_, selective activation
  checkpointing (`share` of blocks recomputed).
Model FLOPs per step = 2 x forward (linear/conv layers counted by hooks + attention with the sliding window's real
key count; frozen base gets no weight grads; recompute not counted), MFU against 989 TFLOP/s (H100 SXM dense bf16).
Before timing, the project step's loss and LoRA gradients are checked against the plain eager step on one batch.

    python benchmarks/train_step.py                     # GPU, full size: ranks 64/256 x clips 30/240 s
    python benchmarks/train_step.py --tiny              # CPU, toy size (a check of the code path)
    torchrun --nproc-per-node 2 benchmarks/train_step.py --ddp --only-project ...   # data-parallel throughput
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from pathlib import Path

import torch

from kernel_profile import device_kernels, kernel_breakdown, step_split
from lofi_lora.train import base_weights
from lofi_lora.train import speed as train_speed
from lofi_lora.core.config import compose_config
from lofi_lora.train.objective import Objective
from lofi_lora.train.state import (BatchOrder, TrainState, add_lora, build_optimizer, build_scheduler, lora_params,
                                   train_step)

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, in_channels=192, patch_size=2, sliding_window=16)
# the project's GPU profile (conf/train/gpu.yaml: lr, AdamW, schedule, clipping) and LoRA targets (conf/lora)
CONFIG = ["train=gpu", "lora.dropout=0.0"]


def dit_config(size: str) -> dict:
    """diffusers transformer config of a real size: 2b = the class defaults, xl = upstream's XL (4.17 B)."""
    if size == "2b":
        return {}
    from lofi_lora.model.native.convert import SIZES, component_configs, native_config_from

    return component_configs(native_config_from(SIZES[size]["dit"], "turbo"))["transformer"]


DIT = "2b"  # --dit
BASE_WEIGHTS = "native"  # --base-weights


def build(tiny: bool, device: str, r: int, seed: int = 0, quantize: bool = True):
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(seed)
    with torch.device(device):
        m = AceStepTransformer1DModel(**(TINY if tiny else dit_config(DIT)))
    if device == "cuda":
        m = m.to(torch.bfloat16)
    base_weights.quantize_blocks(m, BASE_WEIGHTS if quantize else "native")  # the plain loop stays the bf16 anchor
    torch.manual_seed(seed + 1)
    add_lora(m, compose_config([*CONFIG, f"lora.r={r}", f"lora.alpha={r}"]).lora)
    for p in lora_params(m).values():
        p.data = p.data.float()  # fp32 LoRA params under bf16 autocast, as the anchor and stage train
    return m


def make_batch(m, batch: int, frames: int, enc_len: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    c = m.config
    g = torch.Generator(device=device).manual_seed(seed)
    wdt = torch.bfloat16 if device == "cuda" else torch.float32
    ctx = c.in_channels - c.audio_acoustic_hidden_dim
    return {"target_latents": torch.randn(batch, frames, c.audio_acoustic_hidden_dim, generator=g, device=device, dtype=wdt),
            "attention_mask": torch.ones(batch, frames, device=device),
            "encoder_hidden_states": torch.randn(batch, enc_len, c.encoder_hidden_size or c.hidden_size, generator=g,
                                                 device=device, dtype=wdt),
            "encoder_attention_mask": torch.ones(batch, enc_len, device=device),
            "context_latents": torch.randn(batch, frames, ctx, generator=g, device=device, dtype=wdt)}


def model_flops(m, batch: dict[str, torch.Tensor]) -> float:
    """FLOPs of one train step (2 x forward) for this batch, counted as the anchor counts them."""
    c, fwd = m.config, [0]

    def hook(mod, inp, out):
        o = out if torch.is_tensor(out) else out[0]
        if isinstance(mod, torch.nn.Linear):
            fwd[0] += 2 * o.numel() * mod.in_features
        else:
            fwd[0] += 2 * o.numel() * mod.in_channels * mod.kernel_size[0] // mod.groups
    hs = [mod.register_forward_hook(hook) for mod in m.modules() if type(mod) in (torch.nn.Linear, torch.nn.Conv1d)]
    x0 = batch["target_latents"]
    dev = x0.device.type
    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        t = torch.full((x0.shape[0],), 0.5, device=x0.device)
        m(hidden_states=x0, timestep=t, timestep_r=t, encoder_hidden_states=batch["encoder_hidden_states"],
          context_latents=batch["context_latents"])
    for h in hs:
        h.remove()
    B, T, enc_len = x0.shape[0], x0.shape[1], batch["encoder_hidden_states"].shape[1]
    S = (T + c.patch_size - 1) // c.patch_size
    att = 0
    for lt in m.layer_types:
        kv = min(S, 2 * c.sliding_window + 1) if lt == "sliding_attention" else S
        att += 4 * c.num_attention_heads * c.head_dim * S * (kv + enc_len)
    return 2 * (fwd[0] + B * att)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(m, batch, ckpt: bool, device: str):
    """The anchor's loop: fp32 LoRA params, foreach AdamW, eager, plain mse, all-or-nothing checkpointing."""
    params = list(lora_params(m).values())
    for p in params:
        p.data = p.data.float()
    m.enable_gradient_checkpointing() if ckpt else m.disable_gradient_checkpointing()
    m.train()
    x0 = batch["target_latents"][:1]
    T = x0.shape[1]
    c = m.config
    t = torch.rand(1, device=device)
    x = dict(hidden_states=x0, timestep=t, timestep_r=t, encoder_hidden_states=batch["encoder_hidden_states"][:1],
             context_latents=batch["context_latents"][:1])
    target = torch.randn(1, T, c.audio_acoustic_hidden_dim, device=device)
    opt = torch.optim.AdamW(params, lr=1e-4)
    ac = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with ac:
            out = m(**x).sample
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, 1


def project_loop(m, batch, share: float, compiled: bool, device: str, ddp_world=None, mode: str | None = None):
    """Stage train's step (`lofi_lora.train.state.train_step`, the function stage train calls) on a batch that
    lives on the device: no host sync in the step."""
    for p in lora_params(m).values():
        p.data = p.data.float()
    fwd = m
    if ddp_world is not None:
        from lofi_lora.train import distributed
        fwd = distributed.wrap(m, ddp_world)
    tcfg = compose_config(CONFIG).train
    opt = build_optimizer(m, tcfg, torch.device(device))
    ac = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    n = batch["target_latents"].shape[0]
    state = TrainState(m, opt, build_scheduler(opt, tcfg), torch.Generator(device=device).manual_seed(0),
                       BatchOrder([batch["target_latents"].shape[1]] * n, n, 0, False),
                       Objective("discrete_turbo", tcfg.logit_mean, tcfg.logit_std, autocast=ac), forward=fwd,
                       compile_mode=mode)

    def step():
        train_step(state, [batch], tcfg.max_grad_norm)
    return step, n


def prepare_project(m, share: float, compiled: bool, device: str, scope: str = "block", mode: str | None = None,
                    budget: float | None = None):
    train_speed.enable_selective_checkpointing(m, share)
    if compiled:
        train_speed.use_fast_attention(m)  # as in stage train (band flex attention on CUDA only)
        train_speed.compile_model(m, scope, mode, "inductor" if device == "cuda" else "aot_eager", budget)
    m.train()


def grads_of(m, batch, device: str, mode: str | None = None):
    """Loss and LoRA gradients of one project-loss evaluation (fixed noise/timesteps)."""
    train_speed.step_begin(mode)
    for p in lora_params(m).values():
        p.grad = None
    ac = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    loss, _ = Objective("uniform", -0.4, 1.0, autocast=ac)(m, batch, torch.Generator(device=device).manual_seed(1))
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten().float() for p in lora_params(m).values()])


def equivalence(plain_m, fast_m, batch, device: str, mode: str | None = None) -> dict:
    """The fast step (compiled, selective checkpointing) against the eager plain model on the same batch."""
    # the plain side: lora_B is zero at init, so move it off zero first (identically in both) to test real grads
    with torch.no_grad():
        for a, b in zip(lora_params(plain_m).values(), lora_params(fast_m).values()):
            a.normal_(0, 0.02, generator=torch.Generator(device=a.device).manual_seed(a.numel() % 9973))
            b.copy_(a)
    lp, gp = grads_of(plain_m, batch, device)
    for _ in range(3 if train_speed.uses_cudagraphs(mode) else 1):  # CUDA graphs: warm-up, record, then replay
        lf, gf = grads_of(fast_m, batch, device, mode)
        gf = gf.clone()
    rel = float((gf - gp).norm() / gp.norm().clamp(min=1e-30))
    cos = float(torch.nn.functional.cosine_similarity(gf, gp, dim=0))
    return {"loss_plain": lp, "loss_fast": lf, "loss_rel_diff": abs(lf - lp) / max(abs(lp), 1e-30),
            "grad_rel_diff": rel, "grad_cos": cos}


def timed(step, device: str, steps: int, warm: int) -> tuple[float, tuple[float, float]]:
    """Mean seconds per step and (peak reserved, peak allocated) GiB over `steps` after `warm` untimed steps."""
    for _ in range(warm):
        step()
    sync(device)
    if device == "cuda":
        torch.cuda.empty_cache()  # what stays reserved is in use (CUDA graph pools included)
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    # CUDA graph replays allocate nothing (their pool was reserved while recording), so allocated peaks miss their
    # activations: the reserved peak after empty_cache() is the honest figure, and the one reported
    if device != "cuda":
        return dt, (float("nan"), float("nan"))
    # allocated: the anchor's figure, kept for comparison
    return dt, (torch.cuda.max_memory_reserved() / 2**30, torch.cuda.max_memory_allocated() / 2**30)


def split_step(step, steps: int = 3) -> dict[str, float]:
    """Profile `steps` more steps on the GPU: ms per step of compute, exposed all-reduce and idle (kernel_profile)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as prof

    sync("cuda")
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync("cuda")
        wall_us = (time.perf_counter() - t0) * 1e6
    kernels = [(e.name, e.time_range.start, e.time_range.end) for e in p.events() if e.device_type == DeviceType.CUDA]
    return step_split(kernels, wall_us, steps)


def row(kind, r, clip_s, batch, ckpt, dt, mem, flops, peak_tflops, world=1):
    tf = flops / dt / 1e12
    return {"loop": kind, "r": r, "clip_s": clip_s, "batch": batch, "ckpt": ckpt, "ms_step": dt * 1e3,
            "audio_s_per_s": clip_s * batch * world / dt, "tflops": tf * world, "mfu": tf / peak_tflops,
            "peak_gib": mem[0], "alloc_gib": mem[1], "world": world}


def fmt(rw) -> str:
    split = (f"  compute {rw['compute_ms']:.1f} / all-reduce {rw['allreduce_ms']:.1f} / idle {rw['idle_ms']:.1f} ms"
             if "compute_ms" in rw else "")
    return (f"{rw['loop']:>8} r={rw['r']:3d} clip={rw['clip_s']:5.0f}s B={rw['batch']:2d} ckpt={rw['ckpt']:>4} "
            f"x{rw['world']}  {rw['ms_step']:8.1f} ms/step {rw['audio_s_per_s']:8.1f} audio-s/s "
            f"{rw['tflops']:7.1f} TFLOP/s MFU {100 * rw['mfu']:5.1f}%  peak {rw['peak_gib']:5.1f} GiB reserved "
            f"({rw['alloc_gib']:.1f} allocated){split}")


def free(device):
    import gc
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def parse_spec(spec: str):
    """"r:clip:B:share[:scope[:mode[:budget]]]" ('-' = default) -> (r, clip_s, B, share, scope, mode, budget)."""
    f = spec.split(":") + ["-"] * 3
    return (int(f[0]), float(f[1]), int(f[2]), float(f[3]), f[4] if f[4] != "-" else "block",
            f[5] if f[5] != "-" else None, float(f[6]) if f[6] != "-" else None)


def set_inductor(settings: list[str]) -> None:
    """Apply KEY=VALUE inductor settings (values parsed as Python literals, else kept as strings)."""
    import ast
    import torch._inductor.config as inductor_config
    for item in settings:
        key, _, raw = item.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        setattr(inductor_config, key, value)  # an unknown key raises AttributeError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="toy-size DiT on CPU (fp32; checks the code path)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--clips", type=float, nargs="+", default=None, help="clip seconds (default 30 240)")
    ap.add_argument("--batch", type=str, default="30:16,240:1", help="project batch per clip length, len:B,...")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 1.0],
                    help="project: share of blocks checkpointed (plain uses 0 -> off, >0 -> all)")
    ap.add_argument("--extra", type=str, default="",
                    help="extra project rows r:clip:B:share[:scope[:mode[:budget]]],... "
                         "(e.g. 64:240:2:0.5 or 64:240:1:0:model:reduce-overhead:0.5; '-' = default)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--scope", default="block", choices=train_speed.COMPILE_SCOPES, help="project rows: compile scope")
    ap.add_argument("--mode", default=None, help="project rows: torch.compile mode (e.g. reduce-overhead)")
    ap.add_argument("--budget", type=float, default=None, help="project rows: activation memory budget (0..1]")
    ap.add_argument("--only-project", action="store_true")
    ap.add_argument("--ddp", action="store_true", help="under torchrun: project step with DDP, one GPU per rank")
    ap.add_argument("--split", action="store_true",
                    help="project rows on the GPU: profile 3 more steps, split into compute, all-reduce and idle")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--enc-len", type=int, default=320)
    ap.add_argument("--profile", type=str, default="",
                    help="r:clip:B:share[:scope[:mode[:budget]]] to profile (torch.profiler top ops, GPU busy share)")
    ap.add_argument("--inductor", nargs="*", default=[], metavar="KEY=VALUE",
                    help="torch._inductor.config settings for every compiled row (e.g. coordinate_descent_tuning=1)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dit", choices=["2b", "xl"], default="2b", help="full-size DiT: 2B (default) or XL")
    ap.add_argument("--base-weights", choices=base_weights.KINDS, default="native",
                    help="frozen DiT block weights (train.base_weights): native bf16, int8 or fp8 (torchao)")
    a = ap.parse_args()
    global DIT, BASE_WEIGHTS
    DIT, BASE_WEIGHTS = a.dit, a.base_weights
    set_inductor(a.inductor)
    device = "cpu" if a.tiny else "cuda"
    world_info, rank = None, 0
    if a.ddp:
        from lofi_lora.train import distributed
        world_info = distributed.setup("auto")
        rank = world_info.rank
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), 989.0)
    else:
        torch.set_num_threads(2)
        name, peak = "cpu", 1.0  # MFU is meaningless on CPU
    clips = a.clips or ([1.0, 4.0] if a.tiny else [30.0, 240.0])
    bmap = {float(k): int(v) for k, v in (x.split(":") for x in a.batch.split(","))}
    steps, warm = (a.steps or (2 if a.tiny else 10)), (1 if a.tiny else 3)
    compiled = not a.no_compile
    out_rows = []

    def emit(rw):
        out_rows.append(rw)
        if rank == 0:
            print(fmt(rw), flush=True)
        if a.json and rank == 0:
            a.json.write_text(json.dumps({"device": name, "rows": out_rows}, indent=1))

    if rank == 0:
        print(f"# {name}; torch {torch.__version__}; compile={compiled} ({a.scope}, mode {a.mode}, budget "
              f"{a.budget}); enc_len={a.enc_len}; inductor {a.inductor}; base weights {a.base_weights}", flush=True)
    for r in a.ranks:
        for clip_s in clips:
            frames = int(clip_s * 25)
            B = bmap.get(clip_s, 1) if not a.tiny else 2
            # -- plain loop (batch 1) ----------------------------------------------------------------------------
            plain_rows = {}
            if not a.only_project:
                for ckpt in sorted({s > 0 for s in a.shares}):
                    m = build(a.tiny, device, r, quantize=False)
                    batch = make_batch(m, 1, frames, a.enc_len, device, seed=0)
                    fl = model_flops(m, batch)
                    step, nb = plain_loop(m, batch, ckpt, device)
                    dt, mem = timed(step, device, steps, warm)
                    rw = row("plain", r, clip_s, 1, "all" if ckpt else "no", dt, mem, fl, peak)
                    plain_rows[ckpt] = rw
                    emit(rw)
                    del m, step, batch
                    free(device)
            # -- project step --------------------------------------------------------------------------------------
            if compiled:
                torch._dynamo.reset()  # a fresh graph per shape set: no recompile-limit fallback to eager
            m = build(a.tiny, device, r)
            batch = make_batch(m, B, frames, a.enc_len, device, seed=0)
            fl = model_flops(m, batch)
            if not a.only_project and r == a.ranks[0]:
                ref = copy.deepcopy(m)
                prepare_project(m, a.shares[-1], compiled, device, a.scope, a.mode, a.budget)
                eq = equivalence(ref, m, {k: v[:1] for k, v in batch.items()}, device, a.mode)
                eq.update(r=r, clip_s=clip_s, share=a.shares[-1], scope=a.scope, mode=a.mode, budget=a.budget)
                if rank == 0:
                    print(f"# equivalence fast vs plain eager (same batch): {json.dumps(eq)}", flush=True)
                out_rows.append({"loop": "equivalence", **eq})
                del ref
                free(device)
            else:
                prepare_project(m, a.shares[0], compiled, device, a.scope, a.mode, a.budget)
            for share in a.shares:
                train_speed.enable_selective_checkpointing(m, share)
                step, nb = project_loop(m, batch, share, compiled, device, world_info, a.mode)
                dt, mem = timed(step, device, steps, warm + (2 if compiled else 0))
                ws = world_info.size if world_info is not None else 1
                rw = row("project", r, clip_s, nb, f"{share:.2f}", dt, mem, fl, peak, ws)
                rw.update(scope=a.scope, mode=a.mode or "default", budget=a.budget, base_weights=BASE_WEIGHTS)
                if a.split and device == "cuda":
                    rw.update(split_step(step))
                emit(rw)
                base = plain_rows.get(share > 0)
                if base and rank == 0:
                    print(f"{'ratio':>8}   project/plain: audio-s/s x{rw['audio_s_per_s'] / base['audio_s_per_s']:.2f}, "
                          f"MFU x{rw['mfu'] / base['mfu']:.2f}, peak x{rw['peak_gib'] / base['peak_gib']:.2f}", flush=True)
            del m, batch
            free(device)
    for spec in [x for x in a.extra.split(",") if x]:
        r, clip_s, B, share, scope, mode, budget = parse_spec(spec)
        if compiled:
            torch._dynamo.reset()
        m = build(a.tiny, device, r)
        batch = make_batch(m, B, int(clip_s * 25), a.enc_len, device, seed=0)
        fl = model_flops(m, batch)
        t0 = time.perf_counter()
        try:
            prepare_project(m, share, compiled, device, scope, mode, budget)
            step, nb = project_loop(m, batch, share, compiled, device, world_info, mode)
            step()
            sync(device)
            first = time.perf_counter() - t0
            dt, mem = timed(step, device, steps, warm + 2)
        except Exception as e:  # one failing variant (a compile mode this torch cannot do) must not lose the others
            if rank == 0:
                print(f"# row {spec} failed: {type(e).__name__}: {str(e)[:800]}", flush=True)
            del m, batch
            free(device)
            continue
        rw = row("project", r, clip_s, nb, f"{share:.2f}", dt, mem, fl, peak,
                 world_info.size if world_info is not None else 1)
        rw.update(scope=scope, mode=mode or "default", budget=budget, first_step_s=round(first, 1),
                  base_weights=BASE_WEIGHTS)
        emit(rw)
        if rank == 0:
            print(f"{'':>8}   compile {scope}, mode {mode or 'default'}, activation budget {budget}, "
                  f"first step (compile) {first:.1f} s", flush=True)
        if budget is not None:
            import torch._functorch.config as functorch_config
            functorch_config.activation_memory_budget = 1.0
        del m, batch
        free(device)
    if a.profile:
        profile(a, device, compiled)
    if world_info is not None:
        from lofi_lora.train import distributed
        distributed.shutdown(world_info)


def profile(a, device, compiled):
    """torch.profiler over 3 steps of one project config and the same plain config: top ops by device time, and
    how much of the step the GPU is busy (kernel time / wall time)."""
    from torch.profiler import ProfilerActivity, profile as prof
    r, clip_s, B, share, scope, mode, budget = parse_spec(a.profile)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for kind in ("project",) if a.only_project else ("plain", "project"):
        torch._dynamo.reset()
        m = build(a.tiny, device, r)
        batch = make_batch(m, B if kind == "project" else 1, int(clip_s * 25), a.enc_len, device, seed=0)
        if kind == "plain":
            step, _ = plain_loop(m, batch, share > 0, device)
        else:
            prepare_project(m, share, compiled, device, scope, mode, budget)
            step, _ = project_loop(m, batch, share, compiled, device, mode=mode)
        for _ in range(4):
            step()
        sync(device)
        t0 = time.perf_counter()
        with prof(activities=acts) as p:
            for _ in range(3):
                step()
            sync(device)
        wall = (time.perf_counter() - t0) / 3
        evs = p.key_averages()
        keys = ["self_cuda_time_total", "cpu_time_total"] if device == "cuda" else ["self_cpu_time_total"]
        for key in keys:
            print(f"# profile {kind} r={r} clip={clip_s}s B={B} share={share} {scope}/{mode} (3 steps), by {key}")
            print(evs.table(sort_by=key, row_limit=14, max_name_column_width=60))
        if device == "cuda":
            annotations = {e.name for e in p.events() if getattr(e, "is_user_annotation", False)}
            gpu = sum(e.self_device_time_total for e in device_kernels(evs, annotations)) / 3 / 1e3
            kernel_breakdown(evs, annotations, steps=3)
            print(f"# {kind}: GPU kernel time {gpu:.1f} ms per step, wall {wall * 1e3:.1f} ms per step (profiled), "
                  f"GPU busy {100 * gpu / (wall * 1e3):.0f}%", flush=True)
        del m, batch
        free(device)


if __name__ == "__main__":
    main()
