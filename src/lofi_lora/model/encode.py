"""The tensors the DiT consumes (cache, training, evaluation), computed exactly as `AceStepPipeline.__call__` does
for text2music (same prompt formatting, tokenizer settings, silence-latent timbre and context), so cached tensors
equal inference inputs.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from lofi_lora.core.errors import ModelError

SAMPLE_RATE = 48000


def latent_hop(pipe) -> int:
    """Audio samples per latent frame (1920 for ACE-Step 1.5: 25 Hz at 48 kHz)."""
    return int(math.prod(pipe.vae.config.downsampling_ratios))


def latent_frames(pipe, num_samples: int) -> int:
    """Latent frames for `num_samples` audio samples (the audio is zero-padded up to whole frames)."""
    return -(-int(num_samples) // latent_hop(pipe))


def prompt_metas(bpm: Any = None, keyscale: Any = None, timesignature: Any = None) -> dict:
    """Sidecar values in the types `AceStepPipeline` expects (int bpm, str key and time signature, None if unknown)."""
    try:
        bpm_i = int(round(float(bpm))) if bpm not in (None, "", "N/A") else None
    except (TypeError, ValueError):
        bpm_i = None
    ks = str(keyscale).strip() if keyscale not in (None, "N/A") else None
    ts = str(timesignature).strip() if timesignature not in (None, "N/A") else None
    return {"bpm": bpm_i if bpm_i and bpm_i > 0 else None, "keyscale": ks or None, "timesignature": ts or None}


def _per_sample(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for {n} samples")
        return list(value)
    return [value] * n


@torch.no_grad()
def encode_conditions(pipe, captions: Sequence[str], lyrics: Sequence[str], *,
                      vocal_language: str | Sequence[str] = "en", bpm: Any = None, keyscale: Any = None,
                      timesignature: Any = None, duration_s: float | Sequence[float] | None = None,
                      max_text_tokens: int = 256, max_lyric_tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Condition-encoder output for a batch, as `AceStepPipeline.__call__` computes it for text2music.

    Each sample is formatted with the pipeline's own `_format_prompt` (SFT template, metas, lyric header) and
    its own metas (scalars apply to all samples). The batch is right-padded; because the text encoder is
    causal and the lyric encoder masks padding, every sample's valid tokens equal a batch-of-one call (which is
    what inference runs). Timbre comes from the condition encoder's silence latent (no reference audio).

    Returns:
        encoder_hidden_states `[B, L, H]` (valid tokens first, padding zeroed) and encoder_attention_mask
        `[B, L]` (bool); sample i's conditions are `states[i, :mask[i].sum()]`.
    """
    n = len(captions)
    langs = _per_sample(vocal_language, n, "vocal_language")
    bpms, keys, sigs = (_per_sample(v, n, k) for v, k in ((bpm, "bpm"), (keyscale, "keyscale"),
                                                           (timesignature, "timesignature")))
    durs = _per_sample(duration_s, n, "duration_s")
    texts, lyric_texts = [], []
    for i in range(n):
        metas = prompt_metas(bpms[i], keys[i], sigs[i])
        t, ly = pipe._format_prompt(prompt=captions[i], lyrics=lyrics[i] or "", vocal_language=langs[i] or "en",
                                    audio_duration=durs[i] if durs[i] else 60.0, instruction=None, **metas)
        texts.append(t)
        lyric_texts.append(ly)

    device = pipe._execution_device
    dtype = pipe.transformer.dtype
    tok = pipe.tokenizer
    text_in = tok(texts, padding="longest", truncation=True, max_length=max_text_tokens, return_tensors="pt",
                  padding_side="right")
    lyric_in = tok(lyric_texts, padding="longest", truncation=True, max_length=max_lyric_tokens,
                   return_tensors="pt", padding_side="right")
    text_ids, text_mask = text_in.input_ids.to(device), text_in.attention_mask.to(device).bool()
    lyric_ids, lyric_mask = lyric_in.input_ids.to(device), lyric_in.attention_mask.to(device).bool()
    text_states = pipe.text_encoder(input_ids=text_ids).last_hidden_state
    lyric_states = pipe.text_encoder.get_input_embeddings()(lyric_ids)

    timbre_frames = math.ceil(30 * pipe.latents_per_second)
    timbre = (pipe.condition_encoder.silence_latent[:, :timbre_frames, :].to(device=device, dtype=dtype)
              .expand(n, -1, -1).contiguous())
    order = torch.arange(n, device=device, dtype=torch.long)
    states, mask = pipe.condition_encoder(
        text_hidden_states=text_states.to(dtype), text_attention_mask=text_mask,
        lyric_hidden_states=lyric_states.to(dtype), lyric_attention_mask=lyric_mask,
        refer_audio_acoustic_hidden_states_packed=timbre, refer_audio_order_mask=order)
    states = states * mask.unsqueeze(-1).to(states.dtype)
    width = int(mask.sum(dim=1).max())
    return states[:, :width].contiguous(), mask[:, :width].contiguous()


@torch.no_grad()
def encode_audio(pipe, audio: torch.Tensor, generator: torch.Generator | list | None = None,
                 sample: bool = True) -> torch.Tensor:
    """48 kHz stereo `[B, 2, N]` -> target latents `[B, T, C]` (T = ceil(N / hop), C = 64 on the real model).

    Like upstream 1.5 preprocessing the latent is drawn from the VAE posterior (`sample=True`); pass one seeded
    generator per sample to make it reproducible. `sample=False` returns the posterior mean.
    """
    from diffusers.utils.torch_utils import randn_tensor

    if audio.dim() != 3 or audio.shape[1] != pipe.vae.config.audio_channels:
        raise ValueError(f"audio must be [B, {pipe.vae.config.audio_channels}, N], got {tuple(audio.shape)}")
    hop = latent_hop(pipe)
    pad = (-audio.shape[-1]) % hop
    if pad:
        audio = torch.nn.functional.pad(audio, (0, pad))
    vae = pipe.vae
    posterior = vae.encode(audio.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = posterior.mean
    if sample:
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        latents = latents + posterior.std * noise
    return latents.transpose(1, 2).to(pipe.transformer.dtype).contiguous()


@torch.no_grad()
def context_latents(pipe, length: int, batch_size: int = 1) -> torch.Tensor:
    """text2music context `[B, T, 2C]`: the silence latent (source) next to an all-ones chunk mask."""
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    src, length = pipe.prepare_src_latents(device=device, dtype=dtype, batch_size=batch_size, latent_length=length)
    mask = pipe._build_chunk_mask(task_type="text2music", latent_length=length, batch_size=batch_size,
                                  device=device, dtype=dtype,
                                  acoustic_dim=pipe.transformer.config.audio_acoustic_hidden_dim)
    return torch.cat([src, mask], dim=-1)


def null_condition(pipe) -> torch.Tensor:
    """The learned unconditional embedding `[1, 1, H]` (CFG dropout in training, guidance at inference)."""
    return pipe.condition_encoder.null_condition_emb.detach()


@torch.no_grad()
def encode_silence(vae, frames: int, window_s: float = 4.0) -> torch.Tensor:
    """Posterior mean of `frames` latent frames of digital silence, `[1, frames, C]`.

    The encoder is a time-invariant conv stack with a finite receptive field, so on constant input its output
    is constant away from the two edges: `window_s` seconds are encoded and the stationary middle frame fills
    the rest (the same values a single encode of the whole length gives, without its memory).
    """
    hop = int(math.prod(vae.config.downsampling_ratios))
    win = min(frames, int(window_s * vae.config.sampling_rate) // hop)
    zeros = torch.zeros(1, vae.config.audio_channels, win * hop, device=vae.device, dtype=vae.dtype)
    enc = vae.encode(zeros).latent_dist.mean.transpose(1, 2)  # [1, win, C]
    if win == frames:
        return enc
    half = win // 2
    mid = enc[:, half:half + 1]
    if not torch.allclose(enc[:, half - 2:half + 3], mid.expand(-1, 5, -1), atol=1e-5, rtol=1e-4):
        raise ModelError(f"VAE encoding of silence is not stationary after {window_s / 2} s: receptive field too wide")
    head, tail = enc[:, :half], enc[:, win - half:]
    return torch.cat([head, mid.expand(-1, frames - 2 * half, -1), tail], dim=1)
