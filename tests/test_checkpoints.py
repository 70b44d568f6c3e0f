"""Checkpoint manifest, verification, retention, and how training picks (or refuses) a checkpoint to resume."""
from __future__ import annotations

import json
import logging

import pytest

from lofi_lora.train.checkpoints import STATE_FILE, CheckpointStore, checkpoint_name
from lofi_lora.core.errors import CheckpointError
from lofi_lora.train.stage import run_train
from helpers.config import changed
from helpers.workspace import workspace


def _writer(payload: bytes):
    def write(tmp):
        (tmp / STATE_FILE).write_bytes(payload)
        (tmp / "pytorch_lora_weights.safetensors").write_bytes(payload[::-1])
    return write


def _store_with(tmp_path, losses: dict[int, float], chash="h1", keep_last=2):
    store = CheckpointStore(tmp_path / "checkpoints")
    for step, loss in losses.items():
        store.save(step, _writer(f"state-{step}".encode()), chash, {"train_loss": loss}, keep_last)
    return store


def test_manifest_records_hashes_and_scores(tmp_path):
    store = _store_with(tmp_path, {5: 1.0})
    manifest = json.loads((store.root / "manifest.json").read_text())
    assert manifest["version"] == 1
    (entry,) = manifest["checkpoints"]
    assert entry["step"] == 5 and entry["config_hash"] == "h1" and entry["scores"] == {"train_loss": 1.0}
    assert set(entry["files"]) == {STATE_FILE, "pytorch_lora_weights.safetensors"}
    assert entry["path"].endswith(checkpoint_name(5)) and "timestamp" not in entry  # reruns hash the same
    assert not list(store.root.glob(".*tmp"))  # built in a temp folder, renamed whole


def test_retention_keeps_last_and_best(tmp_path):
    store = _store_with(tmp_path, {10: 0.5, 20: 0.9, 30: 0.8, 40: 0.7}, keep_last=2)
    assert [e["step"] for e in store.entries()] == [10, 30, 40]  # 10 is the best train loss
    assert sorted(p.name for p in store.root.glob("checkpoint-*")) == [checkpoint_name(s) for s in (10, 30, 40)]
    # evaluation scores (val_loss) take precedence over the train loss once present
    entries = store.entries()
    entries[1]["scores"]["val_loss"] = 0.1
    assert store.best(entries)["step"] == 30


def test_select_skips_corrupt_and_foreign(tmp_path, caplog):
    store = _store_with(tmp_path, {10: 0.5, 20: 0.4, 30: 0.3}, keep_last=5)
    store.save(40, _writer(b"other"), "h2", {"train_loss": 0.1}, keep_last=5)
    (store.root / checkpoint_name(30) / STATE_FILE).write_bytes(b"bit rot")
    with caplog.at_level(logging.WARNING):
        entry = store.select("h1")
    assert entry["step"] == 20
    assert "corrupt" in caplog.text and "another config" in caplog.text
    with pytest.raises(CheckpointError, match="sha256"):
        store.select("h1", resume_from=30)
    with pytest.raises(CheckpointError, match="available steps"):
        store.select("h1", resume_from=25)
    with pytest.raises(CheckpointError, match="config hash"):
        store.select("h1", resume_from=40)
    assert store.select("h1", resume_from=10)["step"] == 10
    assert store.discard("h1", after_step=10) == 3
    assert [e["step"] for e in store.entries()] == [10]


def test_missing_file_is_corrupt(tmp_path):
    store = _store_with(tmp_path, {10: 0.5})
    (store.root / checkpoint_name(10) / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        store.verify(store.entries()[0])
    assert store.select("h1") is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run with checkpoints at steps 2, 4, 6."""
    root = tmp_path_factory.mktemp("ckpt_run")
    cfg = workspace(root, max_steps=6, checkpoint_every=2, keep_last=3)
    run_train(cfg)
    return cfg


def _copy(cfg, tmp_path, **train):
    """The trained run's config and checkpoints in a fresh lora/metrics folder."""
    import shutil

    new = changed(cfg, paths={"lora": str(tmp_path / "lora"), "metrics": str(tmp_path / "metrics")}, train=train)
    shutil.copytree(f"{cfg.paths.lora}/checkpoints", tmp_path / "lora" / "checkpoints")
    return new


def test_training_resumes_past_a_corrupt_checkpoint(trained, tmp_path, caplog):
    cfg = _copy(trained, tmp_path, max_steps=7)
    (tmp_path / "lora" / "checkpoints" / checkpoint_name(6) / STATE_FILE).write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        result = run_train(cfg)
    assert "skipping corrupt checkpoint" in caplog.text
    assert result["resumed_from"] == 4 and result["steps"] == 7 and result["steps_run"] == 3


def test_resume_from_picks_one_and_errors_clearly(trained, tmp_path):
    cfg = _copy(trained, tmp_path, max_steps=6, resume_from=2)
    assert run_train(cfg)["resumed_from"] == 2
    cfg.train.resume_from = 5
    with pytest.raises(CheckpointError, match="resume_from=5"):
        run_train(cfg)


def test_other_config_is_never_resumed(trained, tmp_path, caplog):
    cfg = _copy(trained, tmp_path, max_steps=6)
    cfg.lora.r = 8
    cfg.train.resume_from = 4
    with pytest.raises(CheckpointError, match="config hash"):
        run_train(cfg)
    cfg.train.resume_from, cfg.train.max_steps = None, 2
    with caplog.at_level(logging.WARNING):
        result = run_train(cfg)
    assert result["resumed_from"] is None and result["steps_run"] == 2
    assert "another config" in caplog.text
    steps = [e["step"] for e in CheckpointStore(tmp_path / "lora" / "checkpoints").entries()]
    assert steps == [2]  # the r=4 checkpoints were dropped, never mixed into retention


def test_resume_safe_keys_keep_the_hash(trained, tmp_path):
    cfg = _copy(trained, tmp_path, max_steps=8, checkpoint_every=3, keep_last=4, log_every=2)
    result = run_train(cfg)
    assert result["resumed_from"] == 6 and result["steps"] == 8


def test_lower_max_steps_resumes_below_it(tmp_path):
    store = _store_with(tmp_path, {10: 0.5, 20: 0.4, 30: 0.3}, keep_last=5)
    assert store.select("h1", max_step=25)["step"] == 20
    with pytest.raises(CheckpointError, match="beyond train.max_steps"):
        store.select("h1", resume_from=30, max_step=25)
