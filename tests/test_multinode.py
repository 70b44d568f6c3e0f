"""Two nodes rehearsed on one host: two torchrun launchers (one per "node", one CPU rank each, gloo) meet at a c10d
rendezvous and train as one DDP job; killed mid-run and launched again, the job resumes from its last checkpoint and
ends bitwise equal to an uninterrupted one. The nodes share a filesystem (the checkpoints), as the README's
SLURM and SkyPilot recipes require."""
from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from helpers.config import changed
from helpers.workspace import child_env, child_files, child_result, workspace

# run_train in one rank of the job: argv[1] a saved config, argv[2] (optional) the optimizer step after which a rank
# signals itself, argv[3] the signal (SIGKILL: the job dies as a preempted allocation does), argv[4] which rank
# ("all" or a global rank); rank 0 prints the result in one write, as helpers.workspace.TRAIN_CHILD does
KILL_CHILD = """
import json
import os
import signal
import sys
from omegaconf import OmegaConf
from lofi_lora.core.config import load_config
from lofi_lora.train.stage import run_train
cfg = load_config(OmegaConf.load(sys.argv[1]))
kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
sig = getattr(signal, sys.argv[3]) if len(sys.argv) > 3 else signal.SIGKILL
mine = len(sys.argv) < 5 or sys.argv[4] in ("all", os.environ["RANK"])
def callback(step):
    if step == kill_at and mine:
        os.kill(os.getpid(), sig)
result = run_train(cfg, step_callback=callback)
if os.environ["RANK"] == "0":
    os.write(1, ("RESULT " + json.dumps(result) + "\\n").encode())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(script: Path, cfg_file: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """Both "nodes" launched as separate torchrun processes against one rendezvous endpoint; their results.

    Output goes to files, not pipes: a node blocked on a full pipe would stall the other in a collective. The c10d
    rendezvous, not --node-rank, decides which node gets global rank 0."""
    endpoint, run_id = f"127.0.0.1:{_free_port()}", uuid.uuid4().hex[:8]
    logs = cfg_file.parent / f"nodes-{run_id}"
    logs.mkdir()
    procs = []
    try:
        for node in (0, 1):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                   "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
                   "--max-restarts", "0", str(script), str(cfg_file), *args]
            with open(logs / f"{node}.out", "wb") as out, open(logs / f"{node}.err", "wb") as err:
                procs.append(subprocess.Popen(cmd, env=child_env(), stdout=out, stderr=err))
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [subprocess.CompletedProcess(p.args, code, (logs / f"{n}.out").read_text(), (logs / f"{n}.err").read_text())
            for n, (p, code) in enumerate(zip(procs, codes))]


def _final(cfg) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from lofi_lora.train.adapters import DIFFUSERS_WEIGHT_NAME

    return load_file(str(Path(cfg.paths.lora) / "final" / DIFFUSERS_WEIGHT_NAME))


@pytest.mark.slow
def test_two_node_rendezvous_trains_and_resumes_exactly_after_a_kill(tmp_path):
    from lofi_lora.train.checkpoints import CheckpointStore

    cfg = workspace(tmp_path, max_steps=4, checkpoint_every=2, keep_last=3)
    script, cfg_file = child_files(cfg, tmp_path, KILL_CHILD)
    full_run = _two_nodes(script, cfg_file)
    assert [p.returncode for p in full_run] == [0, 0], [p.stderr[-3000:] for p in full_run]
    full = _final(cfg)
    result = child_result("".join(p.stdout for p in full_run))  # rank 0 prints it, on whichever node it landed
    assert result["steps"] == 4 and result["resumed_from"] is None

    killed = changed(cfg, paths={"lora": str(tmp_path / "killed" / "lora"),
                                 "metrics": str(tmp_path / "killed" / "metrics")})
    (tmp_path / "killed").mkdir()
    script, cfg_file = child_files(killed, tmp_path / "killed", KILL_CHILD)
    crashed = _two_nodes(script, cfg_file, "3")
    assert all(p.returncode != 0 for p in crashed), [p.stderr[-2000:] for p in crashed]
    assert [e["step"] for e in CheckpointStore(Path(killed.paths.lora) / "checkpoints").entries()] == [2]
    assert not (Path(killed.paths.lora) / "final").exists()

    again = _two_nodes(script, cfg_file)  # the job launched again without the kill, as a requeued job is
    assert [p.returncode for p in again] == [0, 0], [p.stderr[-3000:] for p in again]
    result = child_result("".join(p.stdout for p in again))
    assert result["resumed_from"] == 2 and result["steps_run"] == 2 and result["steps"] == 4
    resumed = _final(killed)
    assert set(resumed) == set(full) and full
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def _agree_rank(rank: int, init: str, values: list, errors) -> None:
    import torch.distributed as dist

    from lofi_lora.core.errors import ConfigError
    from lofi_lora.train.distributed import World, must_agree

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        must_agree("the checkpoint to resume from", values[rank], World(rank, 2, 0), "share paths.lora")
    except ConfigError as e:
        errors.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_nodes_that_see_different_checkpoints_stop_with_one_line(tmp_path):
    """Two gloo ranks, one of which found checkpoint 2 and one none (nodes without a shared filesystem): both stop
    with the same error naming each rank's view, instead of training mismatched replicas."""
    import torch.multiprocessing as mp

    errors = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_agree_rank, args=(f"file://{tmp_path / 'store'}", [2, None], errors), nprocs=2)
    got = sorted(errors.get() for _ in range(2))
    assert [r for r, _ in got] == [0, 1] and got[0][1] == got[1][1]
    assert "rank 0: 2, rank 1: None" in got[0][1] and "share paths.lora" in got[0][1]


@pytest.mark.slow
def test_a_signal_on_one_node_stops_every_rank_after_the_same_step(tmp_path):
    """SIGTERM reaches only rank 1 (one node preempted or shut down): every rank stops after that step, rank 0 saves
    its checkpoint (the ranks' collectives line up) and both launchers exit with an error."""
    from lofi_lora.train.checkpoints import CheckpointStore

    cfg = workspace(tmp_path, max_steps=4, checkpoint_every=2, keep_last=3)
    script, cfg_file = child_files(cfg, tmp_path, KILL_CHILD)
    stopped = _two_nodes(script, cfg_file, "1", "SIGTERM", "1")
    assert all(p.returncode != 0 for p in stopped), [p.stderr[-2000:] for p in stopped]
    assert sum("stopped by signal 15 at step 1; checkpoint saved" in p.stderr for p in stopped) == 2, \
        [p.stderr[-3000:] for p in stopped]
    store = CheckpointStore(Path(cfg.paths.lora) / "checkpoints")
    assert [e["step"] for e in store.entries()] == [1]
    store.verify(store.entries()[0])
