"""Export the FULL-size ACE-Step 1.5 DiT (random weights) to ONNX FP32 (external data) and INT4; sizes, parity, latency.

Why: the tiny pipeline proves the recipe; this shows it holds at 2048 hidden / 24 layers (~1.6 B parameters,
~6.4 GB of FP32 weights: external data is mandatory) and how ONNX Runtime compares with PyTorch bf16 on the
same call. Reference for parity is PyTorch FP32 (TF32 off); PyTorch bf16 is reported against it too.

    python benchmarks/export_full.py                 # full size, CUDA if available (GPU machine)
    python benchmarks/export_full.py --tiny          # toy size, runs on a laptop CPU in under a minute
    python benchmarks/export_full.py --small         # 5 M parameters: sizes are weight-dominated, still CPU-quick

onnxruntime's CUDA EP is used when the installed build has it (onnxruntime-gpu); otherwise the ONNX models run
on the CPU EP, once per shape (`--ort-repeats` defaults to 1 there).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lofi_lora.export import onnx_export as ox  # noqa: E402
from lofi_lora.export import ort as ortx  # noqa: E402
from lofi_lora.export import parity, quantize  # noqa: E402

log = logging.getLogger("export_full")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, in_channels=192, audio_acoustic_hidden_dim=64, patch_size=2, sliding_window=16)
# research note onnx-export.md's "exp7" size: big enough that weights, not graph overhead, decide file sizes
SMALL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
             head_dim=32, in_channels=192, audio_acoustic_hidden_dim=64, patch_size=2, sliding_window=16)


def build(size: str, device: str, seed: int):
    """AceStepTransformer1DModel with the diffusers default (= released 1.5 turbo) config, seeded random weights."""
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = AceStepTransformer1DModel(**{"tiny": TINY, "small": SMALL, "full": {}}[size])
    # default init leaves weights at nn.Linear's uniform(±1/sqrt(fan_in)); keep it (realistic activation scale)
    return model.eval().to(torch.float32)


def torch_call(model, inputs, dtype):
    def fn():
        out = ox.run_torch(model, inputs, dtype)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out
    return fn


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="toy-size transformer (CPU smoke run)")
    ap.add_argument("--small", action="store_true", help="5 M-parameter transformer (CPU size/latency check)")
    ap.add_argument("--out-dir", default="outputs/export_full", help="gitignored scratch folder")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--opset", type=int, default=20)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--asymmetric", action="store_true")
    ap.add_argument("--accuracy-level", type=int, default=None, help="MatMulNBits accuracy_level (4: int8 compute, CPU)")
    ap.add_argument("--exclude", nargs="*", default=["condition_embedder"], help="modules kept fp32 in INT4")
    ap.add_argument("--frames", type=int, default=250, help="latent frames of the timed call (250 = 10 s)")
    ap.add_argument("--encoder-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--parity-frames", type=int, nargs="*", default=[64, 251])
    ap.add_argument("--repeats", type=int, default=10, help="timed torch calls")
    ap.add_argument("--ort-repeats", type=int, default=None, help="timed ORT calls (default: repeats on CUDA EP, 1 on CPU EP)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": vars(args), "device": device, "torch": torch.__version__}
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)

    t0 = time.perf_counter()
    model = build("tiny" if args.tiny else "small" if args.small else "full", device, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    report["params"] = n_params
    log.info("built %.1f M-parameter transformer on %s in %.1f s", n_params / 1e6, device, time.perf_counter() - t0)
    dims = ox.denoiser_dims(model)
    cases = [ox.denoiser_inputs(dims, 1, f, 64, seed=10 + i) for i, f in enumerate(args.parity_frames)]
    timed = ox.denoiser_inputs(dims, args.batch, args.frames, args.encoder_len, seed=3)
    refs = [ox.run_torch(model, c) for c in cases]
    report["torch_fp32_ms"] = ortx.median_latency_ms(torch_call(model, timed, torch.float32), args.repeats, 2)["median_ms"]

    # FP32 export with external data (mandatory past 2 GB; forced here so both sizes take the same path)
    fp32 = out / "fp32" / "denoiser.onnx"
    t0 = time.perf_counter()
    files = ox.export_denoiser(model, fp32, args.opset, ox.denoiser_inputs(dims, 2, 64, 16, seed=1), external=True)
    report["export_fp32_s"] = round(time.perf_counter() - t0, 1)

    # PyTorch bf16: same weights, parity against fp32, latency
    model = model.to(torch.bfloat16)
    report["torch_bf16"] = parity.worst({str(i): parity.compare(r, ox.run_torch(model, c, torch.bfloat16))
                                         for i, (r, c) in enumerate(zip(refs, cases))})
    report["torch_bf16_ms"] = ortx.median_latency_ms(torch_call(model, timed, torch.bfloat16), args.repeats, 2)["median_ms"]
    del model
    if device == "cuda":
        torch.cuda.empty_cache()

    int4 = out / "int4" / "denoiser.onnx"
    t0 = time.perf_counter()
    quantize.to_int4(fp32, int4, args.block_size, not args.asymmetric, args.accuracy_level, args.exclude)
    report["quantize_int4_s"] = round(time.perf_counter() - t0, 1)

    fp32_bytes = ortx.file_bytes(files)
    for name, path in (("fp32", fp32), ("int4", int4)):
        sess = ortx.session(path)
        provider = sess.get_providers()[0]
        repeats = args.ort_repeats or (args.repeats if provider == "CUDAExecutionProvider" else 1)
        figs = parity.worst({str(i): parity.compare(r, ortx.run_denoiser(sess, c, dims["patch_size"]))
                             for i, (r, c) in enumerate(zip(refs, cases))})
        lat = ortx.median_latency_ms(lambda: ortx.run_denoiser(sess, timed, dims["patch_size"]), repeats,
                                     1 if repeats > 1 else 0)
        size = ortx.file_bytes(sorted(path.parent.glob("denoiser.onnx*")))
        report[f"onnx_{name}"] = {"bytes": size, "gb": round(size / 1e9, 3), "ratio_to_fp32": round(size / fp32_bytes, 4),
                                  "provider": provider, "parity_vs_torch_fp32": figs, "latency_ms": lat}
        del sess
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    log.info("report: %s", out / "report.json")
    rows = [("torch fp32", "-", f"{report['torch_fp32_ms']:.1f}", "0"),
            ("torch bf16", "-", f"{report['torch_bf16_ms']:.1f}", f"{report['torch_bf16']['rel_l2']:.2e}")]
    for name in ("fp32", "int4"):
        r = report[f"onnx_{name}"]
        rows.append((f"onnx {name} ({r['provider'].replace('ExecutionProvider', '')})", f"{r['gb']:.3f}",
                     f"{r['latency_ms']['median_ms']:.1f}", f"{r['parity_vs_torch_fp32']['rel_l2']:.2e}"))
    print(f"{n_params / 1e6:.1f} M params, timed shape B={args.batch} T={args.frames} S={args.encoder_len}")
    print(f"{'model':28} {'GB':>8} {'ms/call':>10} {'rel_l2 vs fp32':>15}")
    for r in rows:
        print(f"{r[0]:28} {r[1]:>8} {r[2]:>10} {r[3]:>15}")
    return report


if __name__ == "__main__":
    main()
