"""The stage script under Hydra multirun: one output folder per job and a summary table (slow: two processes' work)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.workspace import make_base_model, make_cache
from lofi_lora.experiments.multirun import job_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_multirun_writes_each_job_to_its_own_folder(tmp_path):
    base = make_base_model(tmp_path)
    dataset, cache = make_cache(tmp_path)
    sweep = tmp_path / "sweep"
    common = [f"paths.dataset={dataset}", f"paths.cache={cache}", f"paths.base_model={base}", "model.source=build",
              "train.max_steps=3", "train.checkpoint_every=2"]  # the toy base: built, not the pretrained default
    jobs = [ROOT / "multirun" / "jobs" / job_key([f"lora.r={r}", *common]) for r in (4, 8)]
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "-m", "lora.r=4,8", *common,
                               f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "multirun summary" in proc.stdout and "train_loss" in proc.stdout
        for job in jobs:  # lofi_lora.experiments.multirun: one folder per job, named after its overrides
            assert (job / "models" / "lora" / "final" / "pytorch_lora_weights.safetensors").is_file()
            assert (job / "models" / "lora" / "peft" / "adapter_config.json").is_file()
            assert (job / "metrics" / "train.json").is_file()
    finally:
        for job in jobs:
            shutil.rmtree(job, ignore_errors=True)
