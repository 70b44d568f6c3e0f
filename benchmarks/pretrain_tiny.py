"""Pretrain the tiny ACE-Step 1.5 pipeline on the non-lofi corpus (issue 25); writes models/pretrained/tiny/.

Same diffusers classes as the real model (Oobleck VAE, AceStepTransformer1DModel + condition encoder, Qwen3 text
encoder, the offline byte-level BPE tokenizer), at a size the 2-core CPU samples from in the demo.
  1. corpus: `lofi_lora.pretrain.corpus` (8 non-lofi styles, captions + metas), rendered in parallel;
  2. VAE: multi-resolution STFT + small KL on random 1 s crops;
  3. DiT: the project's flow-matching objective (`lofi_lora.train.objective.Objective`, the turbo timesteps stage train
     uses), trained end to end with the text and condition encoders, conditioned through `encode_conditions` exactly
     as stage dataset encodes captions; EMA weights are saved.
Provenance (script, config, seed, corpus hashes, device, wall time, losses) goes into provenance.json beside the
weights. GPU: `python benchmarks/pretrain_tiny.py --device cuda --out DIR` (the defaults are the committed run's
config; the phases stop on wall time, so another machine takes `--vae-steps 1633 --dit-steps 2019` for the same
step counts); CPU proof at toy size: `--toy`. KL 2e-3 collapsed the posterior (benchmarks/NOTES.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lofi_lora.model.encode import context_latents, encode_conditions, encode_silence
from lofi_lora.model.tiny import build_pipeline, tokenizer_corpus, train_tokenizer
from lofi_lora.train.objective import Objective, flow_matching_loss, timestep_scheme
from lofi_lora.model import pretrained as weights
from lofi_lora.pretrain import corpus
from lofi_lora.pretrain.losses import kl_standard_normal, multi_resolution_stft

# The pretrained tiny model's sizes (real ACE-Step 1.5 in brackets). 3.7 M parameters, 14.7 MB in float32.
BUILD = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,  # [2048/6144/24/16]
             num_key_value_heads=2, head_dim=32, sliding_window=64,                               # [8/128/128]
             num_lyric_encoder_hidden_layers=1, num_timbre_encoder_hidden_layers=1,
             latent_channels=8, vae_channel_multiples=[1, 2, 4, 8, 8],                            # [64, 1-2-4-8-16]
             vae_downsampling_ratios=[2, 4, 4, 6, 10], vae_decoder_channels=16,                   # [same, 128]
             text_hidden_dim=64, text_encoder_layers=2, text_intermediate_size=128,               # [1024/28/3072]
             text_num_attention_heads=4, text_num_key_value_heads=2, text_head_dim=16, vocab_size=1024)
TOY = dict(BUILD, hidden_size=32, intermediate_size=64, num_hidden_layers=2, head_dim=8, vae_decoder_channels=8,
           text_hidden_dim=32, text_intermediate_size=64, text_head_dim=8, text_encoder_layers=1)
VARIANT = "turbo"
HOP = 1920
CROP_FRAMES = 25  # VAE crops: 1 s


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lr_at(frac: float, peak: float, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine down to 10 % of the peak, as a function of the share of the budget spent."""
    if frac < warmup:
        return peak * frac / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - warmup) / (1 - warmup)))))


class Budget:
    """Stop after `steps` steps, or (steps=0) after `seconds` of wall time; `frac` drives the learning rate."""

    def __init__(self, steps: int, seconds: float):
        self.steps, self.seconds, self.t0, self.step = steps, seconds, time.perf_counter(), 0

    @property
    def frac(self) -> float:
        return self.step / self.steps if self.steps else (time.perf_counter() - self.t0) / self.seconds

    def done(self) -> bool:
        return self.frac >= 1.0


def heldout_lofi(seconds: float, n: int = 2) -> np.ndarray:
    """Lofi clips the model never sees (the demo's style): the VAE's held-out reconstruction set."""
    from lofi_lora.synth.render import TrackSpec, render_track

    clips = []
    for i, (style, tonic, mode, bpm) in enumerate((("CORE-01", "A", "minor", 80), ("JAZZ-04", "F", "major", 88),
                                                   ("AMB-03", "E", "minor", 66))[:n]):
        x, _ = render_track(TrackSpec(f"ho{i}", style, bpm, tonic, mode, max(seconds, 16.0), 1000 + i), 48000)
        clips.append(x[:, : int(seconds * 48000)])
    return np.stack(clips)


@torch.no_grad()
def vae_recon_error(vae, audio: torch.Tensor, device) -> float:
    """Mean multi-resolution STFT distance between clips and their reconstruction through the posterior mean."""
    errs = []
    for x in audio:
        x = x[None].to(device)
        x = x[..., : x.shape[-1] // HOP * HOP]
        z = vae.encode(x).latent_dist.mean
        errs.append(float(multi_resolution_stft(vae.decode(z).sample[..., : x.shape[-1]], x)))
    return float(np.mean(errs))


def train_vae(vae, audio: torch.Tensor, args, device, gen: torch.Generator) -> dict:
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.8, 0.99), weight_decay=0.0)
    budget = Budget(args.vae_steps, args.vae_seconds)
    n_clips, n = audio.shape[0], audio.shape[-1]
    crop = CROP_FRAMES * HOP
    hist = []
    while not budget.done():
        idx = torch.randint(0, n_clips, (args.vae_batch,), generator=gen)
        start = torch.randint(0, n - crop, (args.vae_batch,), generator=gen)
        x = torch.stack([audio[i, :, s:s + crop] for i, s in zip(idx.tolist(), start.tolist())]).to(device)
        x = x * torch.empty(x.shape[0], 1, 1).uniform_(0.3, 1.4, generator=gen).to(device)  # level augmentation
        for g in opt.param_groups:
            g["lr"] = lr_at(budget.frac, args.vae_lr)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        rec = vae.decode(z).sample[..., :crop]
        spec = multi_resolution_stft(rec, x)
        kl = kl_standard_normal(post.mean, post.std)
        loss = spec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        budget.step += 1
        hist.append((float(spec.detach()), float(kl.detach())))
        if budget.step % 100 == 0 or budget.step == 1:
            s, k = np.mean(hist[-100:], axis=0)
            log(f"vae step {budget.step} stft {s:.4f} kl {k:.3f} lr {opt.param_groups[0]['lr']:.2e}")
    vae.eval()
    s, k = np.mean(hist[-100:], axis=0)
    return {"steps": budget.step, "seconds": round(time.perf_counter() - budget.t0, 1),
            "final_stft": round(float(s), 5), "final_kl": round(float(k), 5)}


@torch.no_grad()
def encode_corpus(vae, audio: torch.Tensor, device, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std `[N, T, C]` of every clip (the DiT draws a fresh posterior sample per step)."""
    means, stds = [], []
    n = audio.shape[-1] // HOP * HOP
    for i in range(0, audio.shape[0], batch):
        post = vae.encode(audio[i:i + batch, :, :n].to(device)).latent_dist
        means.append(post.mean.transpose(1, 2))
        stds.append(post.std.transpose(1, 2))
    return torch.cat(means), torch.cat(stds)


def condition_batch(pipe, plan, idx: list[int]):
    """Conditions of clips `idx` with gradients, through the same formatting stage dataset caches."""
    specs = [plan[i] for i in idx]
    return encode_conditions.__wrapped__(pipe, [c.caption for c in specs], [""] * len(specs), vocal_language="en",
                                         bpm=[c.bpm for c in specs], keyscale=[c.keyscale for c in specs],
                                         timesignature="4", duration_s=[c.seconds for c in specs])


def train_dit(pipe, plan, means, stds, train_idx, val_idx, args, device, gen: torch.Generator) -> dict:
    modules = torch.nn.ModuleList([pipe.transformer, pipe.condition_encoder, pipe.text_encoder])
    modules.train()
    ema = copy.deepcopy(modules).eval().requires_grad_(False)
    params = [p for p in modules.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.dit_lr, betas=(0.9, 0.99), weight_decay=0.01)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    objective = Objective(timestep_scheme("auto", VARIANT), -0.4, 1.0, 0.0, None, autocast)
    frames = means.shape[1]
    ctx = context_latents(pipe, frames, 1)
    budget = Budget(args.dit_steps, args.dit_seconds)
    hist = []
    train_idx_t = torch.tensor(train_idx)
    while not budget.done():
        pick = train_idx_t[torch.randint(0, len(train_idx), (args.dit_batch,), generator=gen)].tolist()
        for g in opt.param_groups:
            g["lr"] = lr_at(budget.frac, args.dit_lr)
        with autocast:
            states, mask = condition_batch(pipe, plan, pick)
        eps = torch.randn(len(pick), frames, means.shape[2], generator=gen).to(device)
        x0 = means[pick] + stds[pick] * eps
        batch = {"target_latents": x0, "encoder_hidden_states": states,
                 "attention_mask": torch.ones(len(pick), frames, device=device),
                 "context_latents": ctx.expand(len(pick), -1, -1)}
        loss, _ = objective(pipe.transformer, batch, gen_dev(gen, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + budget.step) / (10 + budget.step))
            for pe, p in zip(ema.parameters(), modules.parameters()):
                pe.lerp_(p.detach(), 1 - decay)
        budget.step += 1
        hist.append(float(loss))
        if budget.step % 100 == 0 or budget.step == 1:
            log(f"dit step {budget.step} loss {np.mean(hist[-100:]):.4f} lr {opt.param_groups[0]['lr']:.2e}")
    seconds = time.perf_counter() - budget.t0
    modules.load_state_dict(ema.state_dict())
    modules.eval()
    return {"steps": budget.step, "seconds": round(seconds, 1), "final_train_loss": round(float(np.mean(hist[-100:])), 5),
            "val_loss_ema": round(val_loss(pipe, plan, means, val_idx, device), 5)}


_DEV_GEN: dict = {}


def gen_dev(gen: torch.Generator, device) -> torch.Generator:
    """A device generator seeded once from the host generator (the objective draws on the latents' device)."""
    if device.type == "cpu":
        return gen
    if device not in _DEV_GEN:
        _DEV_GEN[device] = torch.Generator(device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    return _DEV_GEN[device]


@torch.no_grad()
def val_loss(pipe, plan, means, idx, device, timesteps=(0.1, 0.3, 0.5, 0.7, 0.9)) -> float:
    """Flow-matching loss of held-out corpus clips at fixed t (posterior means, seeded noise)."""
    g = torch.Generator("cpu").manual_seed(0)
    frames = means.shape[1]
    ctx = context_latents(pipe, frames, 1)
    losses = []
    for i in range(0, len(idx), 16):
        pick = idx[i:i + 16]
        states, _ = encode_conditions(pipe, [plan[j].caption for j in pick], [""] * len(pick),
                                      bpm=[plan[j].bpm for j in pick], keyscale=[plan[j].keyscale for j in pick],
                                      timesignature="4", duration_s=[plan[j].seconds for j in pick])
        batch = {"target_latents": means[pick], "encoder_hidden_states": states,
                 "attention_mask": torch.ones(len(pick), frames, device=device),
                 "context_latents": ctx.expand(len(pick), -1, -1)}
        for t in timesteps:
            noise = torch.randn(means[pick].shape, generator=g).to(device)
            losses.append(float(flow_matching_loss(pipe.transformer, batch, torch.full((len(pick),), t, device=device),
                                                   noise)[0]))
    return float(np.mean(losses))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="models/pretrained/tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips-per-genre", type=int, default=150)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--workers", type=int, default=corpus.default_workers())
    ap.add_argument("--vae-steps", type=int, default=0, help="0: train for --vae-seconds")
    ap.add_argument("--vae-seconds", type=float, default=150.0)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-4)
    ap.add_argument("--dit-steps", type=int, default=0, help="0: train for --dit-seconds")
    ap.add_argument("--dit-seconds", type=float, default=150.0)
    ap.add_argument("--dit-batch", type=int, default=64)
    ap.add_argument("--dit-lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--presets", default="presets")
    ap.add_argument("--toy", action="store_true", help="toy sizes (a CPU proof of the script, not the model)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    build = dict(TOY if args.toy else BUILD)

    t0 = time.perf_counter()
    plan = corpus.plan_corpus(args.seed, args.clips_per_genre, args.seconds)
    audio_np, audio_hash = corpus.render_corpus(plan, workers=args.workers)
    audio = torch.from_numpy(audio_np)
    t_corpus = time.perf_counter() - t0
    log(f"corpus: {len(plan)} clips, {audio.shape[0] * args.seconds / 3600:.2f} h, {t_corpus:.1f} s")

    tok_lines = tokenizer_corpus(args.presets) + sorted({c.caption for c in plan})
    tokenizer = train_tokenizer(tok_lines, int(build["vocab_size"]))
    torch.manual_seed(args.seed)
    pipe = build_pipeline(build, VARIANT, args.seed, tokenizer).to(device)
    gen = torch.Generator("cpu").manual_seed(args.seed)
    held = torch.from_numpy(heldout_lofi(args.seconds))
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(plan))
    n_val = max(len(corpus.GENRES), int(args.val_fraction * len(plan)))
    val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())

    recon_before = {"heldout_lofi": vae_recon_error(pipe.vae, held, device),
                    "corpus_val": vae_recon_error(pipe.vae, audio[val_idx[:8]], device)}
    vae_stats = train_vae(pipe.vae, audio[train_idx], args, device, gen)
    recon_after = {"heldout_lofi": vae_recon_error(pipe.vae, held, device),
                   "corpus_val": vae_recon_error(pipe.vae, audio[val_idx[:8]], device)}
    log(f"vae recon (mr-stft): random {recon_before}, trained {recon_after}")
    # As in the real checkpoint, the silence latent is the (trained) VAE's encoding of digital silence.
    sil = pipe.condition_encoder.silence_latent
    sil.copy_(encode_silence(pipe.vae, sil.shape[1]).to(sil))
    means, stds = encode_corpus(pipe.vae, audio, device)
    lat = {"mean_std": round(float(means.std()), 4), "mean_abs_mean": round(float(means.mean().abs()), 4),
           "posterior_std_mean": round(float(stds.mean()), 4)}
    log(f"latents {tuple(means.shape)}: {lat}")
    dit_stats = train_dit(pipe, plan, means, stds, train_idx, val_idx, args, device, gen)
    log(f"dit: {dit_stats}")

    pipe.to("cpu")
    provenance = {
        "version": 1, "script": "benchmarks/pretrain_tiny.py",
        "config": {k: v for k, v in vars(args).items() if k not in ("out",)}, "seed": args.seed, "variant": VARIANT,
        "build": build, "toy": args.toy,
        "corpus": {"module": "lofi_lora.pretrain.corpus", "genres": sorted(corpus.GENRES), "clips": len(plan),
                   "clip_seconds": args.seconds, "hours": round(len(plan) * args.seconds / 3600, 3),
                   "plan_sha256": corpus.plan_hash(plan), "audio_sha256": audio_hash,
                   "train_clips": len(train_idx), "val_clips": len(val_idx), "render_seconds": round(t_corpus, 1)},
        "device": {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or platform.machine(), "torch": torch.__version__},
        "vae": {**vae_stats, "recon_mrstft_random": recon_before, "recon_mrstft_trained": recon_after,
                "latents": lat},
        "dit": {**dit_stats, "objective": "lofi_lora.train.objective.Objective",
                "timesteps": timestep_scheme("auto", VARIANT)},
        "params": {c: sum(p.numel() for p in getattr(pipe, c).parameters()) for c in weights.COMPONENTS},
    }
    provenance["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    record = weights.save(pipe, args.out, provenance)
    log(json.dumps({k: record[k] for k in ("vae", "dit", "files", "wall_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
