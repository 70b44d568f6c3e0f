"""Data-parallel scaling of the project's train step: the same config on 1 GPU and on N GPUs (torchrun, DDP), one table.

Runs benchmarks/train_step.py twice, with the same arguments and per-GPU batch: first on one GPU (which also fills
inductor's compile cache for the second run), then under `torchrun --nproc-per-node N --ddp`. It prints the audio
seconds per second of each run and their ratio, the issue's figure of merit (target: 2 GPUs >= 1.8x).

    python benchmarks/ddp_scaling.py --gpus 2 -- --scope model --mode reduce-overhead --clips 240 --batch 240:1
    python benchmarks/ddp_scaling.py --gpus 2 --tiny          # CPU ranks (gloo), toy size: a check of the path
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = Path(__file__).with_name("train_step.py")
BASE = ["--only-project", "--ranks", "64", "--shares", "0"]


def run(cmd: list[str], env: dict[str, str], out: Path) -> list[dict]:
    print("#", " ".join(cmd), flush=True)
    subprocess.run(cmd + ["--json", str(out)], env=env, check=True)
    return [r for r in json.loads(out.read_text())["rows"] if r.get("loop") == "project"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="toy size on CPU ranks")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then arguments for train_step.py")
    a = ap.parse_args()
    extra = [x for x in a.rest if x != "--"] + (["--tiny", "--ranks", "4"] if a.tiny else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        one_env = env if a.tiny else dict(env, CUDA_VISIBLE_DEVICES=env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
        one = run([sys.executable, str(STEP), *BASE, *extra], one_env, Path(tmp) / "one.json")
        many = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(a.gpus), str(STEP),
                    *BASE, *extra, "--ddp"], env, Path(tmp) / "many.json")
    print(f"\n{'r':>3} {'clip s':>6} {'B/GPU':>5} {'1 GPU ms':>9} {'1 GPU audio-s/s':>15} "
          f"{f'{a.gpus} GPU ms':>9} {f'{a.gpus} GPU audio-s/s':>15} {'scaling':>8}")
    for o, m in zip(one, many):
        print(f"{o['r']:>3} {o['clip_s']:>6.0f} {o['batch']:>5} {o['ms_step']:>9.1f} {o['audio_s_per_s']:>15.1f} "
              f"{m['ms_step']:>9.1f} {m['audio_s_per_s']:>15.1f} {m['audio_s_per_s'] / o['audio_s_per_s']:>7.2f}x")


if __name__ == "__main__":
    main()
