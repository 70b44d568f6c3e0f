"""The whole chain for each adapter type on the tiny default base: train (with EMA) -> evaluate (raw and EMA
candidates) -> export (merge, ONNX FP32 and the parity gates), all through the stage functions (issue 27)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from helpers.config import real_config
from lofi_lora.data import audio as audio_io

LOKR = {"decompose_both": False, "decompose_factor": -1, "rank_dropout": 0.0, "module_dropout": 0.0}
ADAPTERS = {"lora": {"type": "lora", "lokr": None}, "dora": {"type": "dora", "lokr": None},
            "lokr": {"type": "lokr", "lokr": LOKR}}


def _cfg(root: Path, kind: str):
    paths = {k: str(root / k) for k in ("clips", "dataset", "cache", "base_model", "lora", "metrics", "plots",
                                        "reports", "onnx")}
    paths["presets"] = str(root / "no_presets")  # tokenizer from template words only: a faster build
    cfg = real_config(root, "model=toy", paths=paths, model={"path": paths["base_model"]}, adapter=ADAPTERS[kind],
                      train={"max_steps": 4, "checkpoint_every": 2, "warmup_steps": 1, "ema_decay": 0.5},
                      eval={"num_prompts": 1, "seeds": [0], "duration_s": 2.0, "last_n": 1, "fad_inf_points": 2,
                            "embedding": "logmel", "vggish_path": None, "clap_path": None, "ema": True})
    e = OmegaConf.to_container(cfg.export)
    e["precisions"] = ["fp32"]
    e["latency"].update(frames=20, repeats=1, warmup=0)
    e["sampler"].update(duration_s=1.0, prompts=e["sampler"]["prompts"][:1])
    return real_config(root, **{k: OmegaConf.to_container(cfg[k]) for k in ("paths", "model", "adapter", "train",
                                                                            "eval")}, export=e)


def _dataset(root: Path, cfg) -> None:
    """Four holdout/train clips of tones, their dataset and cache, as stages dataset/preprocess leave them."""
    from lofi_lora.dataset.stage import build_cache, build_dataset
    from lofi_lora.model.load import load_pipeline, weights_digest

    sr, rng, records = 48000, np.random.default_rng(0), []
    for i in range(4):
        t = np.arange(int(2.0 * sr)) / sr
        y = 0.3 * np.sin(2 * np.pi * (110 * (i + 1)) * t) + 0.05 * rng.normal(size=t.size)
        wav = root / "clips" / "wav" / f"t{i}__000.wav"
        audio_io.write(wav, np.stack([y, y]).astype(np.float32), sr)
        records.append({"clip_id": f"t{i}__000", "track_id": f"t{i}", "audio": {"path": str(wav), "sampling_rate": sr},
                        "caption": f"lofi tone {i}", "lyrics": "[Instrumental]", "style_id": "CORE-01",
                        "style_ids": ["CORE-01"], "duration": 2.0, "bpm": 80.0 + i, "keyscale": "A minor",
                        "timesignature": "4", "vocal_language": "en"})
    build_dataset(records, {"t0", "t1"}, 1).save_to_disk(str(root / "dataset"))
    pipe = load_pipeline(cfg.model, cfg.paths.base_model)
    build_cache(pipe, records, root / "cache", weights_hash=weights_digest(cfg.paths.base_model), batch_size=2,
                latent_seed=0, max_text_tokens=256, max_lyric_tokens=512)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dora", "lokr"])
def test_train_evaluate_export_per_adapter_type(tmp_path, kind):
    from lofi_lora.evaluate.stage import run_evaluate
    from lofi_lora.export.stage import run_export
    from lofi_lora.model.stage import run_base_model
    from lofi_lora.train.adapters import EMA_WEIGHT_NAME, read_info
    from lofi_lora.train.stage import run_train

    torch.set_num_threads(2)
    cfg = _cfg(tmp_path, kind)
    run_base_model(cfg)
    _dataset(tmp_path, cfg)
    run_train(cfg)
    lora = Path(cfg.paths.lora)
    assert read_info(lora / "final")["adapter_type"] == kind
    assert {p.name for p in (lora / "comfyui").iterdir()} == {"lofi-lora_ace-step-v15-turbo.safetensors"}
    assert (lora / "peft" / "adapter_config.json").is_file() and (lora / "final" / EMA_WEIGHT_NAME).is_file()

    run_evaluate(cfg)
    scores = json.loads((lora / "best" / "scores.json").read_text())
    (entry,) = [e for e in scores["checkpoints"] if e["step"] == 4]
    assert isinstance(entry["scores"]["val_loss"], float) and isinstance(entry["ema_scores"]["val_loss"], float)
    assert entry["scores"]["val_loss"] != entry["ema_scores"]["val_loss"]  # two different adapters were scored
    assert read_info(lora / "best")["adapter_type"] == kind

    summary = run_export(cfg)  # the merge gate and FP32's gates stop the stage when they miss
    metrics = json.loads((Path(cfg.paths.metrics) / "export.json").read_text())["export"]
    assert metrics["lora_layers_merged"] > 0 and summary["fp32_passed"] is True
