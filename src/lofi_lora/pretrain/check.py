"""Checks that the pretrained tiny base has learned: VAE reconstruction on unseen audio, and caption conditioning.

Both compare against something the model never saw: lofi clips from `lofi_lora.synth` (the VAE), and freshly
seeded renders of the pretraining styles (conditioning). Embeddings are `fd_logmel128_v1`'s (LogMel128).
"""
from __future__ import annotations

import numpy as np
import torch

from lofi_lora.pretrain.corpus import ClipSpec, render_clip
from lofi_lora.pretrain.losses import multi_resolution_stft, spectral_convergence

SAMPLE_RATE = 48000


def lofi_clips(seconds: float = 6.0) -> torch.Tensor:
    """Three lofi clips (CORE, JAZZ, AMB; the demo's target style, absent from pretraining), `[3, 2, N]`."""
    from lofi_lora.synth.render import TrackSpec, render_track

    out = []
    for i, (style, tonic, mode, bpm) in enumerate((("CORE-01", "D", "minor", 84), ("JAZZ-05", "G", "minor", 80),
                                                   ("AMB-03", "C", "major", 64))):
        x, _ = render_track(TrackSpec(f"check{i}", style, bpm, tonic, mode, max(16.0, seconds), 4242 + i), SAMPLE_RATE)
        out.append(torch.from_numpy(x[:, : int(seconds * SAMPLE_RATE) // 1920 * 1920].copy()))
    return torch.stack(out)


@torch.no_grad()
def vae_recon_error(vae, audio: torch.Tensor, metric: str = "mrstft") -> float:
    """Mean distance between each clip and its reconstruction through the posterior mean.

    `mrstft`: the training loss (spectral convergence + log magnitude); `sc`: spectral convergence alone.
    """
    fn = {"mrstft": multi_resolution_stft, "sc": spectral_convergence}[metric]
    errs = []
    for x in audio:
        x = x[None].to(vae.device, vae.dtype)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample[..., : x.shape[-1]]
        errs.append(float(fn(rec, x)))
    return float(np.mean(errs))


def style_clips(seconds: float = 4.0, seed: int = 99) -> torch.Tensor:
    """One freshly seeded clip of every pretraining style (seeds the pretraining plan never drew), `[8, 2, N]`."""
    from lofi_lora.pretrain.corpus import plan_corpus

    return torch.stack([torch.from_numpy(render_clip(c)[:, : int(seconds * SAMPLE_RATE) // 1920 * 1920].copy())
                        for c in plan_corpus(seed, 1, seconds)])


@torch.no_grad()
def sample(pipe, spec: ClipSpec, seconds: float, seed: int, caption: str | None = None) -> np.ndarray:
    """One text2music sample `[2, n]` for `spec`'s caption and metas, with the turbo settings the demo samples with."""
    out = pipe(prompt=caption or spec.caption, lyrics="", audio_duration=seconds, num_inference_steps=8, shift=3.0,
               guidance_scale=1.0, bpm=spec.bpm, keyscale=spec.keyscale, timesignature="4",
               generator=torch.Generator("cpu").manual_seed(seed), output_type="pt")
    return out.audios[0].float().cpu().numpy()


def clip_embedding(embedder, audio: np.ndarray) -> np.ndarray:
    """Mean LogMel128 vector of one clip."""
    return embedder.embed(audio, SAMPLE_RATE).mean(axis=0)


def nearest_style(sample_vecs: dict[str, np.ndarray], ref_vecs: dict[str, np.ndarray]) -> dict[str, dict]:
    """For each style's samples: the distance of their mean embedding to every style's reference centroid.

    Dimensions are standardised by the references' spread, so no band dominates. `correct`: the own style's
    references are the nearest. `correct_relative`: the same after subtracting, per reference style, its mean
    distance to every style's samples, i.e. a caption of style A moves the samples toward A's clips more than the
    other captions do (a tiny base's samples can all sit nearest one central style and still be steered).
    """
    allref = np.concatenate(list(ref_vecs.values()))
    scale = allref.std(axis=0) + 1e-6
    cents = {s: v.mean(axis=0) / scale for s, v in ref_vecs.items()}
    dist = {s: {r: float(np.linalg.norm(v.mean(axis=0) / scale - c)) for r, c in cents.items()}
            for s, v in sample_vecs.items()}
    col_mean = {r: float(np.mean([dist[s][r] for s in dist])) for r in cents}
    out = {}
    for s, d in dist.items():
        centred = {r: d[r] - col_mean[r] for r in d}
        out[s] = {"distances": d, "nearest": min(d, key=d.get), "correct": min(d, key=d.get) == s,
                  "nearest_relative": min(centred, key=centred.get),
                  "correct_relative": min(centred, key=centred.get) == s}
    return out


def conditioning_check(pipe, styles: tuple[str, ...], per_style: int = 3, seconds: float = 6.0, seed: int = 7,
                       caption_of: dict[str, str] | None = None) -> dict[str, dict]:
    """Sample `per_style` clips per style from its captions and score them against fresh renders of each style.

    `caption_of` replaces a style's captions by another style's (the shuffled-caption control).
    """
    from lofi_lora.metrics.embeddings import LogMel128
    from lofi_lora.pretrain.corpus import plan_corpus

    emb = LogMel128()
    plan = [c for c in plan_corpus(seed, per_style, seconds) if c.genre in styles]  # seeds unseen in pretraining
    refs: dict[str, list] = {s: [] for s in styles}
    samples: dict[str, list] = {s: [] for s in styles}
    by_style = {s: [c for c in plan if c.genre == s] for s in styles}
    for i, c in enumerate(plan):
        refs[c.genre].append(clip_embedding(emb, render_clip(c)))
        cap = by_style[caption_of[c.genre]][len(samples[c.genre])].caption if caption_of else None
        samples[c.genre].append(clip_embedding(emb, sample(pipe, c, seconds, seed + i, cap)))
    return nearest_style({s: np.stack(v) for s, v in samples.items()}, {s: np.stack(v) for s, v in refs.items()})
