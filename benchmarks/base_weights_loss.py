"""The frozen base in native precision, int8 and fp8 (`train.base_weights`) trained for the same steps on the same
cached batches, through stage train's own `run_train`: smoothed loss against native's, peak GPU memory, ms per step
at steady state (the loop's own clock, compile left out; issue 28, item 3). A second native run with another seed gives the noise the difference is judged against.

Runs in a finished rehearsal's work folder (its params.yaml, dataset and cache; its own outputs are not touched):

    python benchmarks/base_weights_loss.py --work /scratch/reh/2b --steps 500 --kinds native int8 fp8
    python benchmarks/base_weights_loss.py --work /tmp/w --steps 20 --kinds native int8   # CPU, after `make demo`'s repo
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
import yaml

from lofi_lora.core.config import load_config
from lofi_lora.train.stage import run_train


def train_once(params: dict, out: Path, steps: int, kind: str, seed: int) -> dict:
    p = json.loads(json.dumps(params))
    p["seed"] = seed
    p["train"].update(max_steps=steps, base_weights=kind, checkpoint_every=steps, resume_from=None, keep_last=1)
    p["paths"].update(lora=str(out / "lora"), metrics=str(out / "metrics"))
    shutil.rmtree(out, ignore_errors=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    res = run_train(load_config(p))
    peak = torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None
    return {"kind": kind, "seed": seed, "steps": steps, "loss_smoothed": res["train_loss_smoothed"],
            "final_loss": res["final_loss"], "ms_per_step": res["loop"]["steady_ms_per_step"], "peak_gib": peak,
            "device": res["device"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a repository whose dataset and cache are built")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--kinds", nargs="+", default=["native", "int8", "fp8"], choices=["native", "int8", "fp8"])
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: <work>/.base_weights)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    work = a.work.resolve()
    out = (a.out or work / ".base_weights").resolve()
    os.chdir(work)  # params.yaml's paths are relative to the repository
    params = yaml.safe_load((work / "params.yaml").read_text())
    seed = int(params["seed"])
    runs = [train_once(params, out / k, a.steps, k, seed) for k in a.kinds]
    runs.append(train_once(params, out / "native-seed", a.steps, "native", seed + 1))
    ref = runs[0]["loss_smoothed"]
    print(f"# {runs[0]['device']}; {a.steps} steps; smoothed loss relative to {a.kinds[0]} at seed {seed}")
    print(f"{'base':>8} {'seed':>6} {'loss_smoothed':>14} {'rel diff':>9} {'ms/step':>8} {'peak GiB':>9}")
    for r in runs:
        r["rel_diff"] = (r["loss_smoothed"] - ref) / ref
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        print(f"{r['kind']:>8} {r['seed']:>6} {r['loss_smoothed']:>14.5f} {r['rel_diff']:>+9.4f} "
              f"{r['ms_per_step']:>8.1f} {peak:>9}")
    print("# the last row (another seed, native) is the noise: a base precision within it costs nothing measurable")
    if a.json:
        a.json.write_text(json.dumps({"steps": a.steps, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
