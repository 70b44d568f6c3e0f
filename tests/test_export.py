"""Stage export on the tiny pipeline: merge check, four ONNX precisions with parity, and the torch-free sampler."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lofi_lora.train import adapters

from lofi_lora.model.load import load_pipeline
from lofi_lora.model.stage import run_base_model
from lofi_lora.data import audio as audio_io
from lofi_lora.core.errors import ExportParityError
from lofi_lora.export import parity, quantize
from lofi_lora.export.sampler import timestep_schedule
from lofi_lora.export.stage import run_export
from helpers.config import real_config

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_trained_like_lora(transformer, rel_delta: float = 0.1, seed: int = 0):
    """PEFT LoRA with random A and B, B rescaled so ||scale * B A|| = rel_delta * ||W|| (a trained magnitude)."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=LORA_TARGETS))
    with torch.no_grad():
        for m in transformer.modules():
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
                a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
                delta = m.scaling["default"] * (b @ a)
                b.mul_(rel_delta * m.get_base_layer().weight.norm() / delta.norm())
    return transformer


def make_cfg(tmp: Path):
    """The real config on the toy model (random weights, 2 layers), checked by the schema, with outputs under `tmp`,
    a short latency run, one short prompt and per-call parity as the gate (the audio gate needs a holdout split:
    test_audio_gate.py, and the demo in test_pipeline.py exports the pretrained default with it)."""
    e = OmegaConf.to_container(real_config(tmp).export)
    e["latency"].update(frames=50, repeats=3, warmup=1)
    e["sampler"].update(duration_s=2.0, prompts=e["sampler"]["prompts"][:1])
    e["audio_gate"] = False
    return real_config(tmp, "model=toy", export=e)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny base model + a trained-magnitude LoRA saved as models/lora/best, a PyTorch reference run of the
    adapter pipeline, then the stage function (which loads both from disk like `python stages/export.py`)."""
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("export")
    cfg = make_cfg(tmp)
    run_base_model(cfg)
    pipe = load_pipeline(cfg.model, cfg.paths.base_model)
    add_trained_like_lora(pipe.transformer)
    adapters.save_diffusers_adapter(adapters.adapter_state_dict(pipe.transformer), Path(cfg.paths.lora) / "best",
                                    r=4, alpha=8, rslora=False, dropout=0.0, target_modules=LORA_TARGETS)
    frames = int(np.ceil(cfg.export.sampler.duration_s * pipe.latents_per_second))
    noise = np.random.default_rng(42).standard_normal((1, frames, pipe.transformer.config.audio_acoustic_hidden_dim),
                                                       dtype=np.float32)
    ref = pipe(prompt=cfg.export.sampler.prompts[0], lyrics=cfg.export.sampler.lyrics, audio_duration=2.0,
               latents=torch.from_numpy(noise), output_type="np").audios
    out_dir, metrics_path = Path(cfg.paths.onnx), Path(cfg.paths.metrics) / "export.json"
    sample_rate = pipe.sample_rate
    del pipe
    summary = run_export(cfg)
    return {"cfg": cfg, "summary": summary, "dir": out_dir, "metrics": json.loads(metrics_path.read_text())["export"],
            "parity": json.loads((metrics_path.with_suffix("") / "parity.json").read_text()),
            "noise": noise, "ref_audio": np.asarray(ref), "sample_rate": sample_rate, "tmp": tmp}


def test_all_precisions_exported_and_within_tolerance(exported):
    m, tol, summary = exported["metrics"], exported["cfg"].export.tolerance, exported["summary"]
    precisions = ("fp32", "fp16", "int8", "int4")
    assert summary["merge_max_abs_err"] <= tol.merge.max_abs_err and m["lora_layers_merged"] == 16
    assert m["merge"]["rel_l2"] < 1e-5
    for p in precisions:
        assert (exported["dir"] / p / "denoiser.onnx").is_file()
        assert m[p]["rel_l2"] <= tol[p].rel_l2 and m[p]["passed"] is True, (p, m[p])
        assert m[p]["mb"] > 0 and summary[f"{p}_ms"] > 0  # latency: returned and logged, never versioned
    fp32_cases = [r for r in exported["parity"] if r["precision"] == "fp32" and r["case"].startswith("2x")]
    assert len(fp32_cases) == 2 and max(r["max_abs_err"] for r in fp32_cases) < 1e-4 and m["fp32"]["size_ratio"] == 1.0
    # quantised formats are smaller and less exact than fp32
    for p in ("fp16", "int8", "int4"):
        assert m[p]["size_ratio"] < 1.0, p
        assert m[p]["rel_l2"] > m["fp32"]["rel_l2"], p
    sampler = {r["precision"]: r for r in exported["parity"] if r["case"] == "sampler_audio"}
    assert sampler["fp32"]["rel_l2"] <= tol.sampler.rel_l2 and set(sampler) == set(precisions)
    assert m["vae"]["rel_l2"] <= tol.vae.rel_l2
    assert summary["int4_mb"] == m["int4"]["mb"]
    # per call on the sampler's own inputs (its prompts' conditions, the Euler trajectory): prompts x steps calls
    on_traj = {r["precision"]: r for r in exported["parity"] if r["case"] == "sampler_inputs"}
    calls = {r["calls"] for r in on_traj.values()}
    n_prompts = len(exported["cfg"].export.sampler.prompts)
    assert set(on_traj) == set(precisions) and len(calls) == 1 and calls.pop() % n_prompts == 0
    assert on_traj["fp32"]["rel_l2"] <= tol.fp32.rel_l2
    assert all(0 < on_traj[p]["rel_l2"] == m[p]["sampler_inputs_rel_l2"] for p in ("fp16", "int8", "int4"))


def test_quantised_graphs_use_the_intended_ops(exported):
    import onnx

    ops = {p: {n.op_type for n in onnx.load(str(exported["dir"] / p / "denoiser.onnx"), load_external_data=False).graph.node}
           for p in ("fp32", "int8", "int4")}
    assert "MatMulNBits" in ops["int4"] and "MatMulNBits" not in ops["fp32"]
    assert "DynamicQuantizeLinear" in ops["int8"] or "MatMulIntegerToFloat" in ops["int8"]
    # 7-bit weights: the u8s8 integer GEMM of non-VNNI CPUs cannot saturate (INT8 parity then holds on any CPU)
    assert 0 < quantize.int8_weight_abs_max(exported["dir"] / "int8" / "denoiser.onnx") <= quantize.INT8_WEIGHT_ABS_MAX
    fp32 = onnx.load(str(exported["dir"] / "fp32" / "denoiser.onnx"))
    kept = quantize.nodes_in_modules(fp32, ["condition_embedder"])
    assert kept, "the excluded projection must be found by its name scope"
    int4 = onnx.load(str(exported["dir"] / "int4" / "denoiser.onnx"), load_external_data=False)
    assert set(kept) <= {n.name for n in int4.graph.node}, "excluded MatMul stays a plain MatMul"
    q4 = exported["cfg"].export.int4  # the stage converts with the export.int4 recipe
    blocks = {a.i for n in int4.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    assert blocks == {q4.block_size}, blocks


def test_onnx_sampler_runs_without_torch_and_matches_the_pipeline(exported, tmp_path):
    noise_path, wav = tmp_path / "noise.npy", tmp_path / "x.wav"
    np.save(noise_path, exported["noise"])
    code = (
        "import sys\n"
        "from lofi_lora.export import sampler\n"
        f"sampler.main(['--onnx-dir', {str(exported['dir'])!r}, '--precision', 'fp32', '--prompt', '0', "
        f"'--noise', {str(noise_path)!r}, '--out', {str(wav)!r}, '--threads', '2'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audio, sr = audio_io.read(wav)
    ref = exported["ref_audio"][0]
    assert sr == exported["sample_rate"] and audio.shape == ref.shape
    figs = parity.compare(ref, audio)
    # PCM_24 in the WAV adds ~1e-7; the gate is the fp32 sampler tolerance
    assert figs["rel_l2"] <= exported["cfg"].export.tolerance.sampler.rel_l2, figs


def test_int8_sampler_writes_audio_close_to_fp32(exported, tmp_path):
    from lofi_lora.export.sampler import OnnxSampler

    fp32 = OnnxSampler(exported["dir"], "fp32", threads=2).generate(0, noise=exported["noise"])
    int8 = OnnxSampler(exported["dir"], "int8", threads=2).generate(0, noise=exported["noise"])
    assert np.all(np.isfinite(int8)) and int8.shape == fp32.shape
    assert parity.compare(fp32, int8)["cosine"] > 0.9


def test_schedule_matches_the_pipeline():
    from diffusers import AceStepPipeline

    ref = AceStepPipeline._get_timestep_schedule(None, num_inference_steps=8, shift=3.0, dtype=torch.float32)
    np.testing.assert_allclose(timestep_schedule(8, 3.0), ref.numpy(), rtol=0, atol=1e-7)
    assert len(timestep_schedule(8, 1.0)) == 8 and timestep_schedule(8, 3.0)[0] == 1.0


def test_parity_gate_fails_with_figures():
    ref = np.linspace(-1, 1, 100, dtype=np.float32)
    figs = parity.compare(ref, ref * 1.1)
    assert figs["rel_l2"] == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ExportParityError, match=r"int4 .*rel_l2 1\.000e-01 > 1\.0e-02"):
        parity.check("int4 denoiser", figs, {"rel_l2": 1e-2, "cosine": None})
    nan = parity.compare(ref, np.full_like(ref, np.nan))
    with pytest.raises(ExportParityError, match="non-finite"):
        parity.check("fp16", nan, {"rel_l2": 1.0})


@pytest.mark.slow
def test_stage_fails_with_figures_when_a_precision_misses_its_tolerance(exported, tmp_path):
    cfg = exported["cfg"].copy()
    cfg.paths.onnx = str(tmp_path / "onnx")
    cfg.paths.metrics = str(tmp_path / "metrics")
    cfg.export.precisions = ["fp32", "int4"]
    cfg.export.tolerance.int4.rel_l2 = 1e-6
    cfg.export.on_gate_failure = "error"
    with pytest.raises(ExportParityError, match=r"int4 denoiser vs PyTorch fp32: parity failed \(rel_l2 .* > 1\.0e-06"):
        run_export(cfg)
    assert not Path(cfg.paths.onnx).exists(), "a failed export leaves no half-written output folder"
    failed = json.loads((tmp_path / "metrics" / "export.json").read_text())["export"]
    assert failed["int4"]["rel_l2"] > 1e-6  # the figures that failed the gate are kept for `dvc metrics show`


@pytest.mark.slow
def test_a_lossy_precision_missing_its_gate_is_dropped_and_flagged(exported, tmp_path):
    """The default: the stage succeeds (the experiment is kept), the failed precision is not shipped, and
    `dvc exp show` reads export.int4.passed = false beside the figures that missed."""
    cfg = exported["cfg"].copy()
    cfg.paths.onnx = str(tmp_path / "onnx")
    cfg.paths.metrics = str(tmp_path / "metrics")
    cfg.export.precisions = ["fp32", "int8", "int4"]
    cfg.export.tolerance.int4.rel_l2 = 1e-6
    assert cfg.export.on_gate_failure == "drop"
    summary = run_export(cfg)
    head = json.loads((tmp_path / "metrics" / "export.json").read_text())["export"]
    assert head["int4"]["passed"] is False and head["int4"]["rel_l2"] > 1e-6 and summary["int4_passed"] is False
    assert head["int8"]["passed"] is True and head["fp32"]["passed"] is True
    assert not (tmp_path / "onnx" / "int4").exists()
    assert (tmp_path / "onnx" / "int8" / "denoiser.onnx").is_file() and (tmp_path / "onnx" / "fp32").is_dir()
    from lofi_lora.export.sampler import OnnxSampler

    with pytest.raises(FileNotFoundError, match="export.int4.passed is false"):
        OnnxSampler(tmp_path / "onnx", "int4")


def test_references_leave_a_gpu_whose_budget_the_fp32_pipeline_would_not_fit(exported):
    """XL's FP32 pipeline (20.6 GiB of weights) does not fit a 16 GiB card: its references run on the CPU instead."""
    from lofi_lora.export.stage import EXPORT_HEADROOM_BYTES, reference_device

    cfg = exported["cfg"]
    pipe = load_pipeline(cfg.model, cfg.paths.base_model)
    weights = sum(p.numel() * 4 for m in pipe.components.values() if isinstance(m, torch.nn.Module)
                  for p in m.parameters())
    gpu = torch.device("cuda:0")
    assert reference_device(pipe, gpu, EXPORT_HEADROOM_BYTES + weights) == gpu
    assert reference_device(pipe, gpu, EXPORT_HEADROOM_BYTES + weights - 1) == torch.device("cpu")
    assert reference_device(pipe, torch.device("cpu"), None) == torch.device("cpu")
