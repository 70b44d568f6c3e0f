"""Data-parallel scaling of the project's train step: the same config on 1 GPU and on N GPUs (torchrun, DDP), one table.

Runs benchmarks/train_step.py with the same arguments and per-GPU batch: first on one GPU (which also fills
inductor's compile cache for the other runs), then under `torchrun --nproc-per-node N --ddp` for each N of
`--gpus`. It prints the audio seconds per second of each run, the speed-up over one GPU, the scaling efficiency
(speed-up / N; goals 1.9x at 2, 3.7x at 4, 7.2x at 8) and, with `--split`, each step split into compute, exposed
all-reduce and idle (benchmarks/kernel_profile.step_split, rank 0's GPU).

    python benchmarks/ddp_scaling.py --gpus 2 4 8 --split -- --scope model --mode reduce-overhead --clips 240 --batch 240:1
    python benchmarks/ddp_scaling.py --gpus 2 4 8 --split -- --scope model --mode reduce-overhead --clips 30 --batch 30:16
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
    ap.add_argument("--gpus", type=int, nargs="+", default=[2], help="GPU counts to compare with one GPU")
    ap.add_argument("--tiny", action="store_true", help="toy size on CPU ranks")
    ap.add_argument("--split", action="store_true", help="split each step into compute, all-reduce and idle (GPU)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table's rows here")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then arguments for train_step.py")
    a = ap.parse_args()
    extra = ([x for x in a.rest if x != "--"] + (["--tiny", "--ranks", "4"] if a.tiny else [])
             + (["--split"] if a.split and not a.tiny else []))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        one_env = env if a.tiny else dict(env, CUDA_VISIBLE_DEVICES=env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
        runs[1] = run([sys.executable, str(STEP), *BASE, *extra], one_env, Path(tmp) / "1.json")
        for n in a.gpus:
            runs[n] = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), str(STEP),
                           *BASE, *extra, "--ddp"], env, Path(tmp) / f"{n}.json")
    table = []
    print(f"\n{'r':>3} {'clip s':>6} {'B/GPU':>5} {'GPUs':>4} {'ms/step':>8} {'audio-s/s':>10} {'speed-up':>8} "
          f"{'efficiency':>10} {'compute ms':>10} {'all-reduce ms':>13} {'idle ms':>7}")
    for n, rows in runs.items():
        for o, m in zip(runs[1], rows):
            up = m["audio_s_per_s"] / o["audio_s_per_s"]
            rec = {"gpus": n, "r": o["r"], "clip_s": o["clip_s"], "batch": o["batch"], "ms_step": m["ms_step"],
                   "audio_s_per_s": m["audio_s_per_s"], "speedup": up, "efficiency": up / n,
                   **{k: m.get(k) for k in ("compute_ms", "allreduce_ms", "idle_ms", "allreduce_total_ms")}}
            table.append(rec)
            split = "".join(f" {rec[k]:>{w}.1f}" if rec[k] is not None else f" {'-':>{w}}"
                            for k, w in (("compute_ms", 10), ("allreduce_ms", 13), ("idle_ms", 7)))
            print(f"{o['r']:>3} {o['clip_s']:>6.0f} {o['batch']:>5} {n:>4} {m['ms_step']:>8.1f} "
                  f"{m['audio_s_per_s']:>10.1f} {up:>7.2f}x {100 * up / n:>9.0f}%{split}")
    if a.json:
        a.json.write_text(json.dumps({"rows": table}, indent=1))


if __name__ == "__main__":
    main()
