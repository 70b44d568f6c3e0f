"""ONNX-only sampler: flow-matching Euler on the exported denoiser, ONNX VAE decoder, WAV out. No torch.

Everything it needs sits in the export folder (`models/onnx/`): `sampler.json` (schedule, sample rate, the
fixed prompt set), `conditions/*.npy` (encoder_hidden_states and context_latents of each prompt, computed once
by the PyTorch pipeline), `<precision>/denoiser.onnx` and `vae/vae_decoder.onnx`. It reproduces
`AceStepPipeline.__call__` for text2music with a turbo model (no CFG): the same shifted timestep schedule
(`_get_timestep_schedule`), the scheduler's Euler step with a terminal sigma 0, and the same peak
normalisation of the decoded audio.

    python -m lofi_lora.export.sampler --onnx-dir models/onnx --precision int8 --prompt 0 --seed 0 --out x.wav
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from lofi_lora.export.ort import run_denoiser, session

log = logging.getLogger(__name__)

MANIFEST = "sampler.json"
TARGET_PEAK = 10.0 ** (-1.0 / 20.0)  # the pipeline normalises to -1 dBFS peak


def timestep_schedule(steps: int, shift: float) -> np.ndarray:
    """Sigmas from 1 towards 0 (terminal 0 excluded), shifted: t' = s t / (1 + (s - 1) t), in float32."""
    t = np.linspace(1.0, 0.0, int(steps) + 1, dtype=np.float32)
    if shift != 1.0:
        t = (np.float32(shift) * t / (np.float32(1.0) + np.float32(shift - 1.0) * t)).astype(np.float32)
    return t[:-1]


def euler_loop(denoiser, noise: np.ndarray, encoder_hidden_states: np.ndarray, context_latents: np.ndarray,
               sigmas: np.ndarray, patch_size: int = 2) -> np.ndarray:
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v(x_i, sigma_i), with sigma_N = 0 (the last step projects to x0).

    `denoiser`: an onnxruntime session, or any callable taking the feed dict (e.g. a PyTorch reference)."""
    x = np.asarray(noise, dtype=np.float32)
    batch = x.shape[0]
    bounds = np.append(np.asarray(sigmas, dtype=np.float32), np.float32(0.0))
    for i in range(len(sigmas)):
        t = np.full((batch,), bounds[i], dtype=np.float32)
        feed = {"hidden_states": x, "timestep": t, "timestep_r": t, "encoder_hidden_states": encoder_hidden_states,
                "context_latents": context_latents}
        v = denoiser(feed) if callable(denoiser) else run_denoiser(denoiser, feed, patch_size)
        x = (x + (bounds[i + 1] - bounds[i]) * v).astype(np.float32)
    return x


def normalise_peak(audio: np.ndarray) -> np.ndarray:
    """As the pipeline: divide by the peak if it clips, then scale every item to a -1 dBFS peak."""
    audio = np.asarray(audio, dtype=np.float32)
    peak = np.max(np.abs(audio), axis=(1, 2), keepdims=True)
    audio = audio / np.maximum(peak, 1.0)
    peak = np.maximum(np.max(np.abs(audio), axis=(1, 2), keepdims=True), 1e-6)
    return (audio * (TARGET_PEAK / peak)).astype(np.float32)


class OnnxSampler:
    """Text2music from exported conditions with ONNX Runtime only."""

    def __init__(self, onnx_dir: str | Path, precision: str = "fp32", threads: int | None = None,
                 prefer_gpu: bool = True):
        self.root = Path(onnx_dir)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no sampler manifest; run the export stage first")
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        denoiser_path = self.root / precision / "denoiser.onnx"
        if not denoiser_path.is_file():
            raise FileNotFoundError(f"{denoiser_path}: precision {precision!r} was not exported (not in "
                                    f"export.precisions, or export.{precision}.passed is false: it missed its parity gate)")
        self.denoiser = session(denoiser_path, threads, prefer_gpu)
        self.vae = session(self.root / self.manifest["vae_decoder"], threads, prefer_gpu)
        self.precision = precision

    @property
    def prompts(self) -> list[dict]:
        return list(self.manifest["prompts"])

    def conditions(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.manifest["prompts"][index]
        return (np.load(self.root / p["encoder_hidden_states"]).astype(np.float32),
                np.load(self.root / p["context_latents"]).astype(np.float32))

    def noise(self, index: int, seed: int) -> np.ndarray:
        """Initial noise for prompt `index` (numpy's generator, not torch's: pass `noise=` to match a torch run)."""
        p = self.manifest["prompts"][index]
        rng = np.random.default_rng(seed)
        return rng.standard_normal((1, int(p["frames"]), int(self.manifest["acoustic_dim"])), dtype=np.float32)

    def latents(self, index: int, noise: np.ndarray) -> np.ndarray:
        enc, ctx = self.conditions(index)
        sigmas = timestep_schedule(self.manifest["steps"], self.manifest["shift"])
        return euler_loop(self.denoiser, noise, enc, ctx, sigmas, int(self.manifest["patch_size"]))

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents `[B, T, C]` -> peak-normalised audio `[B, channels, samples]`."""
        (audio,) = self.vae.run(None, {"latents": np.ascontiguousarray(latents.transpose(0, 2, 1), dtype=np.float32)})
        return normalise_peak(audio)

    def generate(self, index: int = 0, seed: int = 0, noise: np.ndarray | None = None) -> np.ndarray:
        if noise is None:
            noise = self.noise(index, seed)
        return self.decode(self.latents(index, noise))


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """One item `[channels, samples]` as WAV through the project's audio module (soundfile, atomic)."""
    from lofi_lora.data import audio as audio_io

    audio_io.write(path, np.asarray(audio, dtype=np.float32), int(sample_rate))
    return Path(path)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx-dir", default="models/onnx")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8", "int4"])
    ap.add_argument("--prompt", type=int, default=0, help="index into sampler.json prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", help="optional .npy of initial noise [1, frames, C] (to match a torch run)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu", action="store_true", help="CPU EP even when CUDA EP is available")
    ap.add_argument("--out", required=True, help="WAV path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sampler = OnnxSampler(args.onnx_dir, args.precision, args.threads, prefer_gpu=not args.cpu)
    noise = np.load(args.noise).astype(np.float32) if args.noise else None
    audio = sampler.generate(args.prompt, args.seed, noise)
    out = write_wav(args.out, audio[0], sampler.manifest["sample_rate"])
    log.info("wrote %s (%s, prompt %d, %.2f s)", out, args.precision, args.prompt,
             audio.shape[-1] / sampler.manifest["sample_rate"])
    return out


if __name__ == "__main__":
    main()
