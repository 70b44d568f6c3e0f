"""Throughput of the dataset stage's cache step (VAE latents + condition encoder) at real ACE-Step 1.5 size.

Builds the real-size 1.5 pipeline shapes (DiT, condition encoder, 48 kHz Oobleck VAE with 64 latent channels,
Qwen3-Embedding-0.6B-shaped text encoder) with random weights directly on the device, then times
`lofi_lora.dataset.stage.encode_batch` (exactly what stage dataset runs per batch, audio decoding excluded) for
several clip lengths and batch sizes. Prints clip-seconds processed per second and peak memory.

    python benchmarks/cache_throughput.py                    # CUDA, bf16, real size (the lead's GPU run)
    python benchmarks/cache_throughput.py --tiny             # CPU, fp32, conf/model/tiny.yaml sizes (a check)

Tokens: the offline toy tokenizer (byte-level BPE) is used, so captions make ~1.5-3x more tokens than
Qwen's tokenizer would; the text part is small next to the VAE either way.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lofi_lora.model.load import WEIGHT_COMPONENTS
from lofi_lora.model.tiny import build_pipeline, tokenizer_corpus, train_tokenizer  # noqa: E402
from lofi_lora.dataset.stage import encode_batch  # noqa: E402

REAL_BUILD = {  # ACE-Step 1.5 turbo (DiT + condition encoder), its VAE, and Qwen3-Embedding-0.6B
    "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 24, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "sliding_window": 128, "num_lyric_encoder_hidden_layers": 8,
    "num_timbre_encoder_hidden_layers": 4, "latent_channels": 64, "vae_channel_multiples": [1, 2, 4, 8, 16],
    "vae_downsampling_ratios": [2, 4, 4, 6, 10], "vae_decoder_channels": 128, "text_hidden_dim": 1024,
    "text_encoder_layers": 28, "text_intermediate_size": 3072, "text_num_attention_heads": 16,
    "text_num_key_value_heads": 8, "text_head_dim": 128, "vocab_size": 151669,
}
CAPTION = ("lofi hip hop, mellow rhodes chords, dusty boom bap drums, vinyl crackle, warm tape saturation, "
           "soft sub bass, relaxed late night mood, jazzy seventh chords, side-chained pads, 80 bpm")


def tiny_build() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml").build)


def build(size: str, device: str, dtype: torch.dtype):
    cfg = REAL_BUILD if size == "real" else tiny_build()
    tok = train_tokenizer(tokenizer_corpus(ROOT / "presets"), min(cfg["vocab_size"], 4096))
    with torch.device(device):
        pipe = build_pipeline(cfg, "turbo", 0, tok)
    pipe = pipe.to(device=device, dtype=dtype) if dtype != torch.float32 else pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(pipe, device: str, duration_s: float, batch: int, repeats: int) -> dict:
    sr = pipe.vae.config.sampling_rate
    records = [{"clip_id": f"bench__{i:03d}", "caption": CAPTION, "lyrics": "[Instrumental]", "bpm": 80,
                "keyscale": "A minor", "timesignature": "4", "vocal_language": "unknown", "duration": duration_s}
               for i in range(batch)]
    waves = torch.randn(batch, 2, int(duration_s * sr), generator=torch.Generator().manual_seed(0)) * 0.1
    kw = dict(latent_seed=0, max_text_tokens=256, max_lyric_tokens=512)
    encode_batch(pipe, waves, records, **kw)  # warm-up (kernels, allocator)
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = encode_batch(pipe, waves, records, **kw)
    sync(device)
    dt = (time.perf_counter() - t0) / repeats
    return {"duration_s": duration_s, "batch": batch, "s_per_batch": round(dt, 4),
            "clip_s_per_s": round(duration_s * batch / dt, 2), "peak_mib": round(peak_mib(device), 1),
            "latent_frames": int(out[0]["target_latents"].shape[0]),
            "cond_tokens": int(out[0]["encoder_hidden_states"].shape[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="conf/model/tiny.yaml sizes on CPU in fp32")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda unless --tiny)")
    ap.add_argument("--dtype", default=None, help="bfloat16 | float32 (default: bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--durations", type=float, nargs="+", default=None, help="clip seconds")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args()
    device = a.device or ("cpu" if a.tiny else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny (CPU) or on a GPU machine")
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    durations = a.durations or ([1.0, 2.0] if a.tiny else [10.0, 30.0, 60.0])
    batches = a.batch_sizes or ([1, 2] if a.tiny else [1, 4])
    repeats = a.repeats or (1 if a.tiny else 3)
    if device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 2) if a.tiny else torch.get_num_threads())

    t0 = time.perf_counter()
    pipe = build("tiny" if a.tiny else "real", device, dtype)
    params = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in WEIGHT_COMPONENTS}
    print(f"# {'tiny' if a.tiny else 'real-size'} ACE-Step 1.5 on {device} ({dtype}), built in "
          f"{time.perf_counter() - t0:.1f} s; params (M): "
          + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in params.items()))
    if device == "cuda":
        print(f"# {torch.cuda.get_device_name()}; weights resident: {torch.cuda.memory_allocated() / 2**20:.0f} MiB")
    rows = []
    header = ["clip_s", "batch", "s/batch", "clip-s/s", "peak MiB", "frames", "tokens"]
    print(" | ".join(f"{h:>9}" for h in header))
    for d in durations:
        for b in batches:
            try:
                r = run(pipe, device, d, b, repeats)
            except torch.OutOfMemoryError:
                print(f"{d:>9} | {b:>9} | out of memory")
                torch.cuda.empty_cache()
                continue
            rows.append(r)
            print(" | ".join(f"{v:>9}" for v in (r["duration_s"], r["batch"], r["s_per_batch"], r["clip_s_per_s"],
                                                  r["peak_mib"], r["latent_frames"], r["cond_tokens"])))
    if a.json:
        a.json.write_text(json.dumps({"device": device, "dtype": str(dtype), "params": params, "rows": rows},
                                     indent=2) + "\n")


if __name__ == "__main__":
    main()
