"""Where does the INT4 error of the exported DiT come from, and which onnxruntime INT4 recipe keeps it smallest?

The full-size rehearsal's INT4 export missed its per-call gate (rel L2 0.21 on 2B, 0.24 on XL; benchmarks/NOTES.md).
This builds the DiT at a given size with random weights drawn as the rehearsal's native checkpoint draws them
(`--init native`: N(0, 0.02), norms near 1, bf16-rounded) or with diffusers' default init (`--init default`, as
benchmarks/export_full.py), or loads a model that has learned (`--init trained`: the pipeline's base model with its
best adapter merged, `--base`/`--lora`, the demo's by default; `--size` is then ignored), optionally merges a rank-64 LoRA delta on the attention projections (lofi_v15's
targets) of a given delta/base Frobenius ratio per layer, then:

1. PyTorch, per layer: quantizes one Linear at a time (round-to-nearest, blocks of 32, symmetric: today's recipe,
   dequantized in place) and reports the per-call rel L2 it causes, for every `--torch-ratios` delta; and the same
   for all layers at once, for RTN symmetric/asymmetric at block 16/32/64/128 (a cheap proxy of the ONNX runs).
2. ONNX: exports the merged model once (FP32) and converts it with each `--specs` recipe through
   `lofi_lora.export.quantize.to_int4`, ranked by per-call rel L2 against PyTorch FP32 (the export stage's parity
   inputs), with file size ratio and CPU EP latency (the stage's latency shape, `--threads` intra-op threads).

A spec is `method-b<block>-sym|asym-acc<level>[-x<exclusions>][-f16]`: method default|rtn|hqq|k_quant|gptq;
exclusions `cond` (condition_embedder, today's), `time` (+ timestep embedders), `none`; `f16` stores the weights
left unquantized (excluded MatMuls and the Gemms) as FP16. GPTQ calibrates on `--calib` random denoiser inputs.

    python benchmarks/int4_methods.py --size tiny                        # CPU smoke run, under a minute
    python benchmarks/int4_methods.py --size 2b --delta-ratio 0 --json $OUT/int4_2b.json   # GPU machine
    python benchmarks/int4_methods.py --init trained --torch-ratios 0 --threads 1    # after `make demo`
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lofi_lora.export import onnx_export as ox  # noqa: E402
from lofi_lora.export import ort as ortx  # noqa: E402
from lofi_lora.export import parity, quantize  # noqa: E402

log = logging.getLogger("int4_methods")

# the calibration size: the 2B's depth at width 512
W512 = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=24, num_attention_heads=8,
            num_key_value_heads=4, head_dim=64)
EXCLUSIONS = {"cond": ["condition_embedder"], "time": ["condition_embedder", "time_embed", "time_embed_r"], "none": []}
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # conf/lora/lofi_v15.yaml
DEFAULT_SPECS = ["default-b32-sym-acc0", "default-b32-asym-acc0", "default-b16-asym-acc0", "default-b64-asym-acc0",
                 "default-b128-asym-acc0", "hqq-b32-asym-acc0", "hqq-b64-asym-acc0", "rtn-b32-asym-acc0",
                 "k_quant-b32-asym-acc0", "default-b64-asym-acc4", "default-b64-asym-acc0-xtime-f16",
                 "default-b32-sym-acc0-f16", "gptq-b32-asym-acc0"]


def transformer_config(size: str, layers: int | None = None) -> dict:
    from lofi_lora.model.native.convert import SIZES, component_configs, native_config_from

    dit = {"w512": W512, "tiny": SIZES["tiny"]["dit"], "2b": SIZES["2b"]["dit"], "xl": SIZES["xl"]["dit"]}[size]
    if layers:  # the size's matrix shapes at a depth a small machine can export (kernel timings per layer)
        dit = {**dit, "num_hidden_layers": layers}
    return component_configs(native_config_from(dit, "turbo"))["transformer"]


@torch.no_grad()
def build(size: str, init: str, device: str, seed: int, layers: int | None = None):
    """AceStepTransformer1DModel at `size`; `native` redraws every tensor as the rehearsal's random checkpoint."""
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = AceStepTransformer1DModel(**transformer_config(size, layers))
    if init == "native":  # lofi_lora.model.native.convert._random_tensor, stored bf16 as the checkpoint is
        gen = torch.Generator(device=device).manual_seed(seed)
        for name, p in model.named_parameters():
            t = torch.randn(p.shape, generator=gen, device=device) * 0.02
            if p.ndim == 1 and "norm" in name.rsplit(".", 2)[-2]:
                t += 1.0
            p.copy_(t.to(torch.bfloat16).float())
    return model.eval().float()


@torch.no_grad()
def load_trained(base: Path, lora: Path, device: str):
    """The base model's transformer with the adapter in `lora` merged, as stage export merges it, and the delta/base
    Frobenius ratio of every merged Linear (what a trained adapter of this size reached)."""
    from omegaconf import OmegaConf

    from lofi_lora.export.merge import merge_lora
    from lofi_lora.model.load import load_pipeline
    from lofi_lora.train import adapters

    pipe = load_pipeline(OmegaConf.load(Path(__file__).resolve().parents[1] / "params.yaml").model, str(base), device,
                         torch.float32)
    before = {n: m.weight.detach().clone() for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    adapters.load_into_pipeline(pipe, lora)
    model = merge_lora(pipe.transformer)
    after = {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    ratios = {n: float((after[n] - w).norm() / w.norm()) for n, w in before.items() if n in after}
    return model.eval().float(), {n: r for n, r in ratios.items() if r > 0}


def lora_layers(model) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.endswith(LORA_TARGETS) and ".layers." in f".{n}"}


@torch.no_grad()
def lora_deltas(model, ratio: float, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """Gaussian rank-`rank` B @ A per LoRA target, scaled to ||delta||_F = ratio * ||W||_F."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for name, lin in lora_layers(model).items():
        w = lin.weight
        d = (torch.randn(w.shape[0], rank, generator=gen) @ torch.randn(rank, w.shape[1], generator=gen)).to(w)
        out[name] = d * (ratio * w.norm() / d.norm())
    return out


@torch.no_grad()
def apply_deltas(model, deltas: dict[str, torch.Tensor], sign: float = 1.0) -> None:
    mods = dict(model.named_modules())
    for name, d in deltas.items():
        mods[name].weight.add_(d, alpha=sign)


def rtn(w: torch.Tensor, block: int, symmetric: bool) -> torch.Tensor:
    """Round-to-nearest 4-bit per block of `block` input columns, dequantized (MatMulNBits' DEFAULT layout)."""
    out_f, in_f = w.shape
    pad = (-in_f) % block
    wb = torch.nn.functional.pad(w, (0, pad)).reshape(out_f, -1, block)
    if symmetric:
        amax = wb.abs().amax(-1, keepdim=True)
        scale = (amax / 8).clamp_min(1e-12)  # ORT: scale = max|w| / 8 with the sign of that extreme, range [-8, 7]
        q = (wb / scale).round().clamp(-8, 7) * scale
    else:
        lo, hi = wb.amin(-1, keepdim=True).clamp(max=0), wb.amax(-1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / 15).clamp_min(1e-12)
        zero = (-lo / scale).round()
        q = ((wb / scale).round() + zero).clamp(0, 15).sub(zero) * scale
    return q.reshape(out_f, -1)[:, :in_f]


def quantizable(model) -> dict[str, torch.nn.Linear]:
    """Linears the ONNX graph holds as MatMul (3-D inputs): all but the timestep embedders (Gemm there)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.startswith("time_embed")}


@torch.no_grad()
def torch_analysis(model, cases, ratios, rank, seed) -> dict:
    """Per-layer and all-layer RTN error in PyTorch, for each delta ratio (delta removed again afterwards)."""
    result = {}
    lins = quantizable(model)
    for ratio in ratios:
        deltas = lora_deltas(model, ratio, rank, seed) if ratio > 0 else {}
        apply_deltas(model, deltas)
        refs = [ox.run_torch(model, c) for c in cases]

        def err():
            return parity.worst({str(i): parity.compare(r, ox.run_torch(model, c)) for i, (r, c) in enumerate(zip(refs, cases))})["rel_l2"]

        per_layer = {}
        for name, lin in lins.items():
            w = lin.weight.detach().clone()
            lin.weight.copy_(rtn(w, 32, True))
            per_layer[name] = err()
            lin.weight.copy_(w)
        all_layers = {}
        saved = {n: lin.weight.detach().clone() for n, lin in lins.items()}
        for block in (16, 32, 64, 128):
            for sym in (True, False):
                for n, lin in lins.items():
                    lin.weight.copy_(rtn(saved[n], block, sym))
                all_layers[f"b{block}-{'sym' if sym else 'asym'}"] = err()
                for n, lin in lins.items():
                    lin.weight.copy_(saved[n])
        # excluding the worst 5% of layers (kept FP) with today's recipe
        worst = sorted(per_layer, key=per_layer.get, reverse=True)[:max(1, len(per_layer) // 20)]
        for n, lin in lins.items():
            if n not in worst:
                lin.weight.copy_(rtn(saved[n], 32, True))
        all_layers["b32-sym, worst 5% of layers kept"] = err()
        for n, lin in lins.items():
            lin.weight.copy_(saved[n])
        ratio_per_layer = {n: float(d.norm() / (dict(model.named_modules())[n].weight - d).norm()) for n, d in deltas.items()}
        apply_deltas(model, deltas, -1.0)
        kinds: dict[str, list[float]] = {}
        for n, e in per_layer.items():
            kind = ".".join(p for p in n.split(".") if not p.isdigit() and p != "layers")
            kinds.setdefault(kind, []).append(e)
        result[str(ratio)] = {
            "per_layer_top": sorted(per_layer.items(), key=lambda kv: -kv[1])[:12],
            "per_kind": {k: {"mean": float(np.mean(v)), "max": float(np.max(v)), "n": len(v)} for k, v in kinds.items()},
            "sum_of_single_layer_sq": float(np.sqrt(sum(e * e for e in per_layer.values()))),
            "all_layers": all_layers, "delta_ratio_per_layer_max": max(ratio_per_layer.values(), default=0.0),
        }
        log.info("torch analysis ratio %s: all-layer %s", ratio, all_layers)
    return result


class Calibration:
    """A CalibrationDataReader over fixed random denoiser inputs (GPTQ); deep-copied per use by onnxruntime."""

    def __init__(self, feeds):
        self.feeds = feeds
        self.i = 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def __iter__(self):
        return iter(copy.deepcopy(self.feeds))

    def rewind(self):
        self.i = 0


def op_profile(path: Path, threads: int, inputs, patch: int, calls: int) -> dict[str, float]:
    """Milliseconds per call by op type (MatMul, MatMulNBits, Softmax, ...), from onnxruntime's profiler."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.parent / "ort_profile")
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    ortx.run_denoiser(sess, inputs, patch)  # warm-up: its events are dropped below
    for _ in range(calls):
        ortx.run_denoiser(sess, inputs, patch)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    warm_end = runs[0][1]
    per_op: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= warm_end:
            per_op.setdefault(e["args"]["op_name"], []).append(e["dur"] / 1000)
    per_op["(whole call)"] = [(b - a) / 1000 for a, b in runs[1:]]
    return {op: round(sum(v) / calls, 2) for op, v in sorted(per_op.items(), key=lambda kv: -sum(kv[1]))}


def parse_spec(spec: str) -> dict:
    parts = spec.split("-")
    out = {"method": parts[0], "block_size": 32, "symmetric": True, "accuracy_level": None, "exclude": "cond",
           "keep_dtype": "fp32"}
    for p in parts[1:]:
        if p[0] == "b":
            out["block_size"] = int(p[1:])
        elif p in ("sym", "asym"):
            out["symmetric"] = p == "sym"
        elif p.startswith("acc"):
            out["accuracy_level"] = int(p[3:]) or None
        elif p[0] == "x":
            out["exclude"] = p[1:]
        elif p == "f16":
            out["keep_dtype"] = "fp16"
        else:
            raise SystemExit(f"spec {spec!r}: unknown part {p!r}")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["tiny", "w512", "2b", "xl"], default="tiny")
    ap.add_argument("--init", choices=["native", "default", "trained"], default="native")
    ap.add_argument("--base", type=Path, default=Path("models/base"), help="--init trained: the base model folder")
    ap.add_argument("--lora", type=Path, default=Path("models/lora/best"), help="--init trained: the adapter folder")
    ap.add_argument("--delta-ratio", type=float, default=0.0, help="LoRA delta/base norm ratio merged before export")
    ap.add_argument("--torch-ratios", type=float, nargs="*", default=[0.0, 0.05, 1.0])
    ap.add_argument("--layers", type=int, default=None, help="override the size's depth (e.g. XL's shapes on a CPU box)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--specs", nargs="*", default=DEFAULT_SPECS)
    ap.add_argument("--no-onnx", action="store_true", help="PyTorch analysis only")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="onnxruntime intra-op threads")
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--encoder-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--out-dir", default="outputs/int4_methods")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--op-profile", action="store_true",
                    help="also time each op type over --repeats calls (onnxruntime's profiler): where a call's time goes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import onnxruntime as ort

    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "device": device, "cpu_count": os.cpu_count(),
                    "onnxruntime": ort.__version__, "torch": torch.__version__, "rows": []}
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    out_json = args.json or Path(args.out_dir) / "report.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out_json.write_text(json.dumps(report, indent=1, default=str) + "\n")

    t0 = time.perf_counter()
    if args.init == "trained":
        model, merged = load_trained(args.base, args.lora, device)
        report["trained_delta_ratio"] = {"layers": len(merged), "median": float(np.median(list(merged.values()))),
                                         "max": max(merged.values())}
        log.info("trained adapter's delta/base ratio: %s", report["trained_delta_ratio"])
    else:
        model = build(args.size, args.init, device, args.seed, args.layers)
    report["params"] = sum(p.numel() for p in model.parameters())
    log.info("built %.1f M params (%s init) in %.1f s", report["params"] / 1e6, args.init, time.perf_counter() - t0)
    dims = ox.denoiser_dims(model)
    # the export stage's parity inputs (conf/export: batch 2, 24 and 51 frames, 16 condition tokens)
    cases = [ox.denoiser_inputs(dims, 2, n, 16, seed=100 + i) for i, n in enumerate((24, 51))]
    t0 = time.perf_counter()
    report["torch"] = torch_analysis(model, cases, args.torch_ratios, args.rank, args.seed)
    report["torch_s"] = round(time.perf_counter() - t0, 1)
    save()
    if args.no_onnx:
        return report

    deltas = lora_deltas(model, args.delta_ratio, args.rank, args.seed) if args.delta_ratio > 0 else {}
    apply_deltas(model, deltas)
    refs = [ox.run_torch(model, c) for c in cases]
    out = Path(args.out_dir)
    fp32 = out / "fp32" / "denoiser.onnx"
    t0 = time.perf_counter()
    files = ox.export_denoiser(model, fp32, 20, ox.denoiser_inputs(dims, 2, 64, 16, seed=1), external=True)
    report["export_fp32_s"] = round(time.perf_counter() - t0, 1)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    fp32_bytes = ortx.file_bytes(files)
    timed = ox.denoiser_inputs(dims, 1, args.frames, args.encoder_len, seed=7)
    calib = [ortx.pad_frames(ox.denoiser_inputs(dims, 1, 64, 16, seed=200 + i), dims["patch_size"])[0]
             for i in range(args.calib)]

    def measure(name: str, path: Path, quant_s: float | None) -> dict:
        t = time.perf_counter()
        sess = ortx.session(path, args.threads, prefer_gpu=False)
        load_s = time.perf_counter() - t
        figs = parity.worst({str(i): parity.compare(r, ortx.run_denoiser(sess, c, dims["patch_size"]))
                             for i, (r, c) in enumerate(zip(refs, cases))})
        lat = ortx.median_latency_ms(lambda: ortx.run_denoiser(sess, timed, dims["patch_size"]), args.repeats, 1)
        size = ortx.file_bytes(sorted(path.parent.glob("denoiser.onnx*")))
        row = {"spec": name, "rel_l2": figs["rel_l2"], "cosine": figs["cosine"], "size_ratio": size / fp32_bytes,
               "mb": size / 1e6, "ms": lat["median_ms"], "quantize_s": quant_s, "session_s": round(load_s, 1)}
        if args.op_profile:
            row["op_ms_per_call"] = op_profile(path, args.threads, timed, dims["patch_size"], args.repeats)
        log.info("%s", row)
        return row

    report["rows"].append(measure("fp32", fp32, None))
    save()
    for spec in args.specs:
        s = parse_spec(spec)
        dst = out / spec / "denoiser.onnx"
        t0 = time.perf_counter()
        try:  # GPTQ's calibration session reads the external data relative to the working directory
            with contextlib.chdir(fp32.parent) if s["method"] == "gptq" else contextlib.nullcontext():
                quantize.to_int4(fp32.resolve(), dst.resolve(), s["block_size"], s["symmetric"], s["accuracy_level"],
                                 EXCLUSIONS[s["exclude"]], method=s["method"], keep_dtype=s["keep_dtype"],
                                 calibration=Calibration(calib) if s["method"] == "gptq" else None)
        except Exception as err:  # one recipe failing (e.g. an unsupported block size) must not lose the others
            log.exception("%s failed", spec)
            report["rows"].append({"spec": spec, "error": f"{type(err).__name__}: {err}"})
            save()
            continue
        report["rows"].append(measure(spec, dst, round(time.perf_counter() - t0, 1)))
        save()
        for f in dst.parent.glob("denoiser.onnx*"):
            f.unlink()
    print_table(report)
    return report


def print_table(report: dict) -> None:
    rows = [r for r in report["rows"] if "error" not in r]
    print(f"{report['params'] / 1e6:.1f} M params, {report['args']['init']} init, delta/base "
          f"{report['args']['delta_ratio']}, onnxruntime {report['onnxruntime']}, CPU EP {report['args']['threads']} threads")
    print("| recipe | rel L2 | cosine | size ratio | ms/call | quantize s |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["rel_l2"]):
        print(f"| {r['spec']} | {r['rel_l2']:.4f} | {r['cosine']:.5f} | {r['size_ratio']:.4f} | {r['ms']:.1f} | "
              f"{r['quantize_s']} |")
    for r in report["rows"]:
        if "error" in r:
            print(f"| {r['spec']} | failed: {r['error'][:80]} |")


if __name__ == "__main__":
    main()
