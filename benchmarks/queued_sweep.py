"""A queued sweep as a user runs it (`dvc exp run --queue -S ...`, then `dvc queue start -j N`), on a finished
rehearsal's work folder (benchmarks/rehearsal.py), timed; on a host with N GPUs each member should hold a GPU of
its own (lofi_lora.core.runtime.pick_device) while the others run.

The rehearsal's composed overrides are repeated with every `-S` (DVC recomposes params.yaml from conf/ and the
`-S` list alone), so only the swept keys differ from the rehearsal and the stages before train are checked out
from DVC's cache. NVML is sampled every 0.5 s: which GPUs had a member process on them, and when.

    python benchmarks/queued_sweep.py --work /scratch/reh/2b --set lora.r=32 --set lora.r=64 \
        --also train.max_steps=200 train.checkpoint_every=100 --target evaluate --json /scratch/reh/out/sweep.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rehearsal import commit_all, nvml_handles, portable, stage_env  # noqa: E402  (the rehearsal's `python` shim and PYTHONPATH)


def dvc(work: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=work, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


class GpuProcesses:
    """Per GPU, the times (s since start) at which a process whose working folder lies under `inside` (a member's
    DVC temp workspace) computed on it; nothing without NVML."""

    def __init__(self, inside: Path):
        self.inside = str(inside)
        self._nvml, self.handles = nvml_handles()
        self.seen: dict[int, set[float]] = {i: set() for i in range(len(self.handles))}
        self._stop = threading.Event()

    def __enter__(self):
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.5):
            now = round(time.perf_counter() - self.t0, 1)
            for i, h in enumerate(self.handles):
                for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(h):
                    try:
                        cwd = os.readlink(f"/proc/{p.pid}/cwd")
                    except OSError:
                        continue
                    if cwd.startswith(self.inside):
                        self.seen[i].add(now)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def member_gpu(log: str) -> list[str]:
    """The devices the member's stages claimed (`using cuda:N` of lofi_lora.core.runtime), in order."""
    return re.findall(r"using (cuda:\d+|cpu)", log)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a rehearsal's work folder (all stages done)")
    ap.add_argument("--set", dest="members", action="append", required=True,
                    help="one member's override(s), space-separated; repeat per member")
    ap.add_argument("--also", nargs="*", default=[], help="overrides every member gets (after the rehearsal's)")
    ap.add_argument("--target", default="evaluate", help="the stage to run the members up to")
    ap.add_argument("--jobs", type=int, default=None, help="dvc queue start -j (default: one per member)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--lock-dir", type=Path, default=None,
                    help="LOFI_LORA_GPU_LOCKS for the members (another folder than a running rehearsal's: then a "
                         "member may share a GPU with it instead of waiting for it)")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()

    work = args.work.resolve()
    base = json.loads((work / ".rehearsal" / "overrides.json").read_text())
    env = stage_env(work, work / ".rehearsal" / "logs" / "sweep.peak")
    env.pop("LOFI_REHEARSAL_PEAK", None)
    if args.lock_dir:
        env["LOFI_LORA_GPU_LOCKS"] = str(args.lock_dir)
    commit_all(work, "rehearsal done")  # the baseline, as a user has it after `dvc repro` and `git commit`

    names, record = [], {"work": str(work), "target": args.target, "members": []}
    for i, member in enumerate(args.members):
        name = f"sweep-{i}"
        sets = [*base, *args.also, *member.split()]
        dvc(work, env, "exp", "run", "--queue", "--name", name, *[a for s in sets for a in ("-S", s)], args.target)
        names.append(name)
        record["members"].append({"name": name, "overrides": member.split()})
    jobs = args.jobs or len(names)
    record["command"] = f"dvc queue start -j {jobs}"
    with GpuProcesses(work / ".dvc" / "tmp" / "exps") as gpus:
        t0 = time.perf_counter()
        dvc(work, env, "queue", "start", "-j", str(jobs))
        while True:
            status = dvc(work, env, "queue", "status", check=False).stdout
            rows = [ln for ln in status.splitlines() if any(n in ln for n in names)]
            if rows and all(re.search(r"\b(Success|Failed)\b", ln) for ln in rows):
                break
            if time.perf_counter() - t0 > args.timeout:
                raise SystemExit(f"queue not done after {args.timeout:.0f} s:\n{status}")
            time.sleep(3)
        record["wall_s"] = round(time.perf_counter() - t0, 1)
    dvc(work, env, "queue", "stop", check=False)
    record["queue_status"] = status.strip()
    for m in record["members"]:
        log = dvc(work, env, "queue", "logs", m["name"], check=False).stdout
        (work / ".rehearsal" / "logs" / f"{m['name']}.log").write_text(log)
        m["devices"] = member_gpu(log)
        m["status"] = next((s for ln in rows if m["name"] in ln for s in ("Success", "Failed") if s in ln), "?")
    busy = {i: sorted(ts) for i, ts in gpus.seen.items()}
    record["member_on_gpu_s"] = {f"cuda:{i}": [ts[0], ts[-1]] if ts else None for i, ts in busy.items()}
    both = set.intersection(*gpus.seen.values()) if len(busy) > 1 else set()
    record["seconds_with_a_member_on_every_gpu"] = round(0.5 * len(both), 1)
    shown = dvc(work, env, "exp", "show", "--json", check=False).stdout
    (work / ".rehearsal" / "logs" / "exp_show.json").write_text(shown)
    record = portable(record, work.parent)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1), flush=True)


if __name__ == "__main__":
    main()
