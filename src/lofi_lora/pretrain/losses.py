"""Spectral reconstruction losses for the VAE (what Oobleck-style audio autoencoders train on, minus the GAN)."""
from __future__ import annotations

import torch

FFT_SIZES = (2048, 1024, 512, 256, 128)


def stft_mag(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """|STFT| of `[B, C, N]` audio, Hann window, hop n_fft/4, `[B*C, F, T]`."""
    window = torch.hann_window(n_fft, device=x.device, dtype=torch.float32)
    spec = torch.stft(x.reshape(-1, x.shape[-1]).float(), n_fft, hop_length=n_fft // 4, window=window,
                      return_complex=True)
    return spec.abs().clamp(min=1e-7)


def multi_resolution_stft(pred: torch.Tensor, target: torch.Tensor, sizes=FFT_SIZES) -> torch.Tensor:
    """Mean over resolutions of spectral convergence + L1 log-magnitude distance (Yamamoto et al. 2020)."""
    total = pred.new_zeros((), dtype=torch.float32)
    for n in sizes:
        p, t = stft_mag(pred, n), stft_mag(target, n)
        sc = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=1e-7)
        total = total + sc + (p.log() - t.log()).abs().mean()
    return total / len(sizes)


def spectral_convergence(pred: torch.Tensor, target: torch.Tensor, sizes=FFT_SIZES) -> torch.Tensor:
    """Mean over resolutions of ||T - P||_F / ||T||_F: the energy-weighted error (loud content dominates).

    The log-magnitude term of `multi_resolution_stft` weights every bin alike, so on audio with an empty band (a
    low-passed lofi clip) the decoder's faint noise floor there dominates it; this one reads what is audible.
    """
    total = pred.new_zeros((), dtype=torch.float32)
    for n in sizes:
        p, t = stft_mag(pred, n), stft_mag(target, n)
        total = total + torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=1e-7)
    return total / len(sizes)


def kl_standard_normal(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean per-element KL(N(mean, std^2) || N(0, 1))."""
    var = std.pow(2)
    return 0.5 * (mean.pow(2) + var - var.clamp(min=1e-12).log() - 1).mean()
