"""Stage train on a GPU with the `train=gpu` speed settings: the whole DiT compiled, CUDA graphs, several batch
shapes, gradient accumulation, checkpoints and a resume in a fresh process (`pytest -m gpu`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lofi_lora.train.adapters import DIFFUSERS_WEIGHT_NAME
from helpers.workspace import TRAIN_CHILD, child_env, child_files, child_result, workspace

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# after the run: how many graphs dynamo compiled and how many inductor ran without CUDA graphs (a silent fallback)
CHILD = TRAIN_CHILD + """
import json
from torch._dynamo.utils import counters
print("COUNTERS " + json.dumps({"graphs": counters["stats"]["unique_graphs"],
                                "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}))
"""
# conf/train/gpu.yaml's speed keys; pad_multiple 8 gives the fixture's clips (12-18 frames, 5-7 tokens) two shapes
GPU_SPEED = dict(compile="model", compile_mode="reduce-overhead", pad_multiple=8, data_on_device="auto")


def _run(cfg, root: Path, *args: str) -> tuple[dict, dict]:
    """Train in a child process; what run_train returned and torch.compile counters."""
    script, cfg_file = child_files(cfg, root, CHILD)
    done = subprocess.run([sys.executable, str(script), str(cfg_file), *args], capture_output=True,
                          text=True, timeout=900, env=child_env())
    assert done.returncode == 0, done.stderr[-4000:]
    counters = json.loads(done.stdout.split("COUNTERS ")[-1])
    return child_result(done.stdout), counters


def _final(cfg) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(cfg.paths.lora) / "final" / DIFFUSERS_WEIGHT_NAME))


def test_cuda_graph_training_resumes_and_matches_eager(tmp_path):
    cfg = workspace(tmp_path / "graphs", max_steps=6, checkpoint_every=3, keep_last=3, batch_size=2, grad_accum=2,
                    **GPU_SPEED)
    full, compiled = _run(cfg, tmp_path / "graphs")
    assert compiled["graphs"] >= 2 and compiled["cudagraph_skips"] == 0  # two batch shapes, both as CUDA graphs
    full_final = _final(cfg)
    assert full["steps"] == 6 and full["final_loss"] is not None
    assert all(torch.isfinite(t).all() for t in full_final.values())

    resumed, _ = _run(cfg, tmp_path / "graphs", "3")  # a fresh process: compiles and records its graphs again
    assert resumed["resumed_from"] == 3 and resumed["steps_run"] == 3
    for k, v in _final(cfg).items():  # GPU kernels may differ in summation order between processes: close, not bitwise
        torch.testing.assert_close(v, full_final[k], rtol=1e-3, atol=1e-5)

    eager_cfg = workspace(tmp_path / "eager", max_steps=6, checkpoint_every=3, keep_last=3, batch_size=2,
                          grad_accum=2, **{**GPU_SPEED, "compile": False, "compile_mode": None})
    eager, eager_compiled = _run(eager_cfg, tmp_path / "eager")
    assert eager_compiled["graphs"] == 0
    assert eager["final_loss"] == pytest.approx(full["final_loss"], rel=0.05)
