"""GPU choice for queued experiments: one lofi-lora process per GPU, by a kernel-released lock per GPU UUID.
The CUDA calls are replaced by a fake two-GPU host; the locks are real files under tmp_path."""
from __future__ import annotations

import fcntl
import threading
import types

import pytest
import torch

from lofi_lora import runtime


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("LOFI_LORA_GPU_LOCKS", str(tmp_path))
    monkeypatch.setattr(runtime, "_claimed", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=f"GPU-{i}"))
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    yield tmp_path, chosen
    if runtime._claimed and runtime._claimed[1]:
        runtime._claimed[1].close()  # releases the flock


def _hold(path):
    fh = open(path, "a+")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fh


def test_takes_the_first_gpu_nobody_holds(two_gpus):
    lock_dir, chosen = two_gpus
    other = _hold(lock_dir / "gpu-GPU-0.lock")  # another experiment runs on GPU 0
    try:
        assert runtime.pick_device() == "cuda:1"
        assert runtime.pick_device() == "cuda:1"  # the same process keeps its GPU
        assert chosen == [1]
        with pytest.raises(OSError):  # and holds it against a third process
            _hold(lock_dir / "gpu-GPU-1.lock")
    finally:
        other.close()


def test_waits_while_every_gpu_is_held(two_gpus):
    lock_dir, _ = two_gpus
    held = [_hold(lock_dir / f"gpu-GPU-{i}.lock") for i in range(2)]
    threading.Timer(0.3, held[0].close).start()  # the experiment on GPU 0 ends
    try:
        assert runtime.pick_device(poll_s=0.05) == "cuda:0"
    finally:
        held[1].close()


def test_cpu_when_no_gpu(monkeypatch):
    monkeypatch.setattr(runtime, "_claimed", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.pick_device() == "cpu"


def test_unusable_lock_folder_falls_back_to_gpu0(two_gpus, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("LOFI_LORA_GPU_LOCKS", str(blocker / "locks"))
    assert runtime.pick_device() == "cuda:0"
