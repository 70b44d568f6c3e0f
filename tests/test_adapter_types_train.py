"""Each adapter type trains through the stage and resumes exactly, its EMA included (issue 27)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.config import changed
from helpers.workspace import workspace
from lofi_lora.train.adapters import DIFFUSERS_WEIGHT_NAME, EMA_WEIGHT_NAME, read_info
from lofi_lora.train.checkpoints import CheckpointStore
from lofi_lora.train.stage import run_train

LOKR = {"decompose_both": False, "decompose_factor": -1, "rank_dropout": 0.0, "module_dropout": 0.0}
ADAPTERS = {"dora": {"type": "dora", "lokr": None}, "lokr": {"type": "lokr", "lokr": LOKR}}


def _files(cfg) -> dict[str, dict[str, torch.Tensor]]:
    lora = Path(cfg.paths.lora)
    return {d: load_file(str(lora / d / DIFFUSERS_WEIGHT_NAME)) for d in ("final", "final_ema")}


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_type_with_ema_resumes_bitwise(tmp_path, kind):
    """12 steps straight vs a resume from the step-5 checkpoint to 12: the same adapter and EMA, bit for bit."""
    cfg = changed(workspace(tmp_path, max_steps=12, checkpoint_every=5, keep_last=3, ema_decay=0.9),
                  adapter=ADAPTERS[kind])
    run_train(cfg)
    straight = _files(cfg)
    assert read_info(Path(cfg.paths.lora) / "final")["adapter_type"] == kind
    assert read_info(Path(cfg.paths.lora) / "final_ema")["ema"] is True
    (entry,) = [e for e in CheckpointStore(Path(cfg.paths.lora) / "checkpoints").entries() if e["step"] == 10]
    assert EMA_WEIGHT_NAME in entry["files"]

    resumed = run_train(changed(cfg, train={"resume_from": 5}))
    assert resumed["resumed_from"] == 5
    again = _files(cfg)
    for d in straight:
        assert straight[d].keys() == again[d].keys()
        for k in straight[d]:
            assert torch.equal(straight[d][k], again[d][k]), (d, k)
    # the EMA lags the raw weights: a different adapter
    assert any(not torch.equal(straight["final"][k], straight["final_ema"][k]) for k in straight["final"])


def test_ema_off_keeps_the_lora_hash_and_files(tmp_path):
    """EMA keys at 0 and adapter=lora leave the config hash as it was before they existed."""
    from lofi_lora.train.stage import train_config_hash

    cfg = workspace(tmp_path, max_steps=2)
    h = train_config_hash(cfg, "data")
    assert h == train_config_hash(changed(cfg, train={"ema_device": "cpu"}), "data")  # not read when off
    assert h != train_config_hash(changed(cfg, train={"ema_decay": 0.99}), "data")
    assert h != train_config_hash(changed(cfg, adapter=ADAPTERS["dora"]), "data")
