"""GPU choice for queued experiments: one lofi-lora process per GPU, by a kernel-released lock per GPU UUID.
The CUDA calls are replaced by a fake two-GPU host; the locks are real files under tmp_path."""
from __future__ import annotations

import fcntl
import threading
import types

import pytest
import torch

from lofi_lora.core import runtime


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    """A fake host; `gpus.count` GPUs (2 unless a test sets it before the first pick_device)."""
    monkeypatch.setenv("LOFI_LORA_GPU_LOCKS", str(tmp_path))
    monkeypatch.setattr(runtime, "_claimed", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    count = {"n": 2}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count["n"])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=f"GPU-{i}"))
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    yield tmp_path, chosen, count
    if runtime._claimed and runtime._claimed[1]:
        runtime._claimed[1].close()  # releases the flock


def _hold(path):
    fh = open(path, "a+")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fh


def test_takes_the_first_gpu_nobody_holds(gpus):
    lock_dir, chosen, _ = gpus
    other = _hold(lock_dir / "gpu-GPU-0.lock")  # another experiment runs on GPU 0
    try:
        assert runtime.pick_device() == "cuda:1"
        assert runtime.pick_device() == "cuda:1"  # the same process keeps its GPU
        assert chosen == [1]
        with pytest.raises(OSError):  # and holds it against a third process
            _hold(lock_dir / "gpu-GPU-1.lock")
    finally:
        other.close()


def test_waits_while_every_gpu_is_held(gpus):
    lock_dir, _, _ = gpus
    held = [_hold(lock_dir / f"gpu-GPU-{i}.lock") for i in range(2)]
    threading.Timer(0.3, held[0].close).start()  # the experiment on GPU 0 ends
    try:
        assert runtime.pick_device(poll_s=0.05) == "cuda:0"
    finally:
        held[1].close()


def test_a_single_gpu_is_claimed_too(gpus):
    """A one-GPU host with `dvc queue start -j 2`: the second experiment waits instead of sharing the GPU."""
    lock_dir, chosen, count = gpus
    count["n"] = 1
    other = _hold(lock_dir / "gpu-GPU-0.lock")
    threading.Timer(0.3, other.close).start()
    assert runtime.pick_device(poll_s=0.05) == "cuda:0" and chosen == [0]


def test_cpu_when_no_gpu(monkeypatch):
    monkeypatch.setattr(runtime, "_claimed", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.pick_device() == "cpu"


def test_unusable_lock_folder_falls_back_to_gpu0(gpus, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("LOFI_LORA_GPU_LOCKS", str(blocker / "locks"))
    assert runtime.pick_device() == "cuda:0"


def test_limit_cpu_threads_sets_torch_threads_on_cpu_only():
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        runtime.limit_cpu_threads("cuda", 1)  # a GPU stage keeps torch's CPU threads
        runtime.limit_cpu_threads("cpu", None)  # null: torch's default
        assert torch.get_num_threads() == 2
        runtime.limit_cpu_threads("cpu", 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)


def test_the_memory_budget_caps_the_allocator_and_refuses_more_than_the_card(monkeypatch):
    """`runtime.gpu_memory_gib` becomes the caching allocator's fraction of the card (a 12 GiB budget on an 80 GiB
    card: 0.15); a budget over the card stops the stage naming the key; on a CPU nothing happens."""
    from lofi_lora.core.errors import ConfigError

    total = 80 * runtime.GIB
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=total))
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    runtime.cap_gpu_memory("cuda:0", 12)
    assert calls == [(12 / 80, "cuda:0")]
    runtime.cap_gpu_memory("cuda:0", None)
    runtime.cap_gpu_memory("cpu", 12)
    assert len(calls) == 1
    with pytest.raises(ConfigError, match="runtime.gpu_memory_gib"):
        runtime.cap_gpu_memory("cuda:0", 96)
    assert runtime.gpu_budget_bytes("cuda:0", 12) == 12 * runtime.GIB
    assert runtime.gpu_budget_bytes("cuda:0", None) == total and runtime.gpu_budget_bytes("cpu", 12) is None


@pytest.mark.gpu
def test_a_capped_stage_runs_out_of_memory_where_a_card_of_that_size_would():
    dev = torch.device("cuda:0")
    runtime.cap_gpu_memory(dev, 1.0)
    try:
        x = torch.empty(int(0.5 * runtime.GIB), dtype=torch.uint8, device=dev)  # fits
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(0.75 * runtime.GIB), dtype=torch.uint8, device=dev)
        assert torch.cuda.memory_reserved(dev) <= runtime.GIB
        del x
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
