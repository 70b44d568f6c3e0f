"""Exact resume: a CPU run killed (SIGKILL) or stopped (SIGTERM) and resumed ends bitwise equal to one that was not."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lofi_lora.train.adapters import DIFFUSERS_WEIGHT_NAME
from lofi_lora.train.checkpoints import CheckpointStore, checkpoint_name
from lofi_lora.train.stage import run_train
from helpers.config import changed
from helpers.workspace import workspace

# A run in its own process that signals itself right after optimizer step `stop_at`.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    from omegaconf import OmegaConf
    from lofi_lora.core.config import load_config
    from lofi_lora.train.stage import run_train
    torch.set_num_threads(int(sys.argv[4]))
    cfg = load_config(OmegaConf.load(sys.argv[1]))
    stop_at, sig = int(sys.argv[2]), getattr(signal, sys.argv[3])
    def callback(step):
        if step == stop_at:
            os.kill(os.getpid(), sig)
    run_train(cfg, step_callback=callback)
""")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (12 steps, checkpoints every 5) and its final adapter tensors."""
    root = tmp_path_factory.mktemp("resume")
    cfg = workspace(root, max_steps=12, checkpoint_every=5, keep_last=3)
    run_train(cfg)
    return cfg, _final(cfg)


def _final(cfg) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(cfg.paths.lora) / "final" / DIFFUSERS_WEIGHT_NAME))


def _fresh_outputs(cfg, tmp_path):
    return changed(cfg, paths={"lora": str(tmp_path / "lora"), "metrics": str(tmp_path / "metrics")})


def _run_child(cfg, tmp_path, stop_at: int, sig: str) -> subprocess.CompletedProcess:
    script, cfg_file = tmp_path / "child.py", tmp_path / "cfg.yaml"
    script.write_text(CHILD)
    OmegaConf.save(cfg, cfg_file)
    return subprocess.run([sys.executable, str(script), str(cfg_file), str(stop_at), sig,
                           str(torch.get_num_threads())], capture_output=True, text=True, timeout=300)


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigkill_then_resume_is_bitwise_equal(reference, tmp_path):
    cfg_ref, expected = reference
    cfg = _fresh_outputs(cfg_ref, tmp_path)
    proc = _run_child(cfg, tmp_path, stop_at=8, sig="SIGKILL")  # 3 steps after checkpoint 5: lost work
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [e["step"] for e in CheckpointStore(tmp_path / "lora" / "checkpoints").entries()] == [5]
    assert not (tmp_path / "lora" / "final").exists()
    result = run_train(cfg)
    assert result["resumed_from"] == 5 and result["steps"] == 12
    _assert_bitwise_equal(_final(cfg), expected)
    # the DVCLive curve has one row per step, no duplicates from the redone steps
    lines = (tmp_path / "metrics" / "train" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    steps = [int(ln.split("\t")[0]) for ln in lines]
    assert steps == list(range(1, 13))


def test_sigterm_saves_a_checkpoint_and_exits(reference, tmp_path):
    cfg_ref, expected = reference
    cfg = _fresh_outputs(cfg_ref, tmp_path)
    proc = _run_child(cfg, tmp_path, stop_at=7, sig="SIGTERM")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    store = CheckpointStore(tmp_path / "lora" / "checkpoints")
    entry = store.entries()[-1]
    assert entry["step"] == 7
    store.verify(entry)
    assert (store.root / checkpoint_name(7) / DIFFUSERS_WEIGHT_NAME).is_file()
    result = run_train(cfg)
    assert result["resumed_from"] == 7
    _assert_bitwise_equal(_final(cfg), expected)


def test_finished_run_is_not_retrained(reference, tmp_path):
    """Running again on a finished run (DVC `repro -f`) resumes at max_steps and trains nothing."""
    import shutil

    cfg_ref, expected = reference
    cfg = _fresh_outputs(cfg_ref, tmp_path)
    shutil.copytree(Path(cfg_ref.paths.lora) / "checkpoints", tmp_path / "lora" / "checkpoints")
    result = run_train(cfg)
    assert result["steps_run"] == 0 and result["resumed_from"] == 12
    _assert_bitwise_equal(_final(cfg), expected)
    # the metrics still report the finished run's last step (from its checkpoint), not nulls
    import json

    from lofi_lora.core.results import meaningful  # the headline file holds the figure to its meaningful digits
    ref_metrics = json.loads((Path(cfg_ref.paths.metrics) / "train.json").read_text())["train"]
    assert result["final_loss"] is not None and meaningful(result["final_loss"]) == ref_metrics["loss"]
