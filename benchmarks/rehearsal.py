"""Full-size dress rehearsal: every `dvc.yaml` stage on a random-weight checkpoint, timed, on one GPU machine.

What a user with real weights runs, minus the real weights: a checkpoint in upstream's native layout at real size
(2B or XL, random weights) is built just before stage base_model, so the chain runs from the folder a user
downloads (conversion included) to the INT4 ONNX model. The corpus is the synth stage's at realistic length
(default 20 tracks of 175.5-179.5 s, one hour of audio: one clip per track, so with batch 1 every train step has
the one 180 s shape and the CUDA-graph profile compiles once). Each stage runs through DVC (`dvc repro -s <stage>`, in dvc.yaml order)
in a fresh copy of the repository, so DVC's own bookkeeping is part of what is timed. Per stage it records the
wall time, the peak GPU memory PyTorch reserved (a `sitecustomize` hook on the stage's PYTHONPATH writes
`torch.cuda.max_memory_reserved()` at exit) and NVML's peak for the GPU the stage claimed.

With `--kill-at-step N` the train stage is SIGKILLed (the whole process group, DVC included) once step N is logged
and a logged step lies past the newest checkpoint, then run again: the resumed run must repeat the losses of the
steps it redoes (the killed run's logged losses are kept and compared).

    python benchmarks/rehearsal.py --variant 2b --work /scratch/reh/2b     # GPU box; keep --work outside the checkout
    bash benchmarks/rehearsal_device.sh /scratch/reh /scratch/reh/out      # 2B and XL at once on two GPUs
    python benchmarks/rehearsal.py --variant tiny-native --work /tmp/reh --tracks 3 --seconds 30 40 --max-clip 30
                                                                           # CPU check of the chain and the script

Results are merged into `--json` (default benchmarks/rehearsal.json) as one run per (variant, device, memory cap).
`--memory-cap GIB` holds every GPU stage to GIB (`runtime.gpu_memory_gib`), as on a card of that size.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# what a stage needs of the repository (everything else is an output or a developer file)
COPY = ["src", "stages", "conf", "presets", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvc/config",
        ".dvc/.gitignore", ".dvcignore",
        ".gitignore", "data/.gitignore", "data/metadata/.gitignore", "data/raw/.gitignore", "models/.gitignore",
        "models/lora/.gitignore", "models/pretrained"]
GIB = 2**30
DATA_STAGES = ("synth", "ingest", "preprocess", "annotate")  # model-independent: another rehearsal's run-cache

HOOK = '''"""Written by benchmarks/rehearsal.py: the peak GPU memory PyTorch reserved, appended at exit."""
import atexit, os, sys


def _lofi_rehearsal_peak():
    path, torch = os.environ.get("LOFI_REHEARSAL_PEAK"), sys.modules.get("torch")
    if not path or torch is None:
        return
    try:
        if not torch.cuda.is_initialized():
            return
        dev = torch.cuda.current_device()
        peak = torch.cuda.max_memory_reserved(dev)
    except Exception:
        return
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {dev} {peak}\\n")


atexit.register(_lofi_rehearsal_peak)


def _chain():  # run the sitecustomize this file shadows, if the interpreter has one
    import importlib.machinery, importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here])
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_chain()
'''

# Per variant: the model config, the native checkpoint size to build, and the train settings of the run.
# Every train step is one whole track (batch 1): with tracks just under `--max-clip` and train.pad_multiple=125,
# all batches have one shape, so the CUDA-graph profile compiles once.
EVAL = ["eval=tiny", "eval.last_n=3", "eval.num_prompts=4", "eval.seeds=[0,1]", "eval.duration_s=30.0",
        "eval.embedding=logmel", "eval.vggish_path=null", "eval.clap_path=null"]
EXPORT = ["export=default", "export.precisions=[fp32,int4]", "export.latency.repeats=3", "export.latency.warmup=1"]
VARIANTS = {
    "tiny": {"model": ["model=tiny"], "build": None,
             "run": ["train=tiny", "train.max_steps=12", "train.checkpoint_every=4", "train.log_every=1",
                     "eval=tiny", "eval.num_prompts=2", "eval.seeds=[0]", "eval.duration_s=4.0", *EXPORT]},
    "tiny-native": {"model": ["model=ace_step_v15"], "build": "tiny",  # the native path on CPU, toy size
                    "run": ["train=tiny", "train.max_steps=12", "train.checkpoint_every=4", "train.log_every=1",
                            "eval=tiny", "eval.num_prompts=2", "eval.seeds=[0]", "eval.duration_s=4.0", *EXPORT]},
    "2b": {"model": ["model=ace_step_v15", "model.source=native"], "build": "2b",
           "run": ["train=gpu", "lora=lofi_v15", "lora.r=64", "train.batch_size=1", "train.max_steps=2000",
                   "train.checkpoint_every=500", "train.log_every=10", "dataset.cache_batch_size=2", *EVAL, *EXPORT]},
    "xl": {"model": ["model=ace_step_v15_xl_turbo", "model.source=native"], "build": "xl",
           "run": ["train=gpu_16gb", "lora=lofi_v15", "lora.r=64", "train.batch_size=1", "train.max_steps=150",
                   "train.checkpoint_every=50", "train.log_every=10", "dataset.cache_batch_size=2", *EVAL, *EXPORT]},
}


def corpus_overrides(tracks: int, seconds: tuple[float, float], max_clip: float, workers: int) -> list[str]:
    """Corpus length and CPU parallelism (the same for every variant, so DVC's run-cache can share the data stages)."""
    return [f"synth.n_tracks={tracks}", f"synth.track_s=[{seconds[0]},{seconds[1]}]", "synth.n_long=0",
            f"audio.max_clip_s={max_clip}", f"synth.workers={workers}", f"ingest.workers={workers}",
            f"audio.workers={workers}", f"annotate.workers={workers}"]


def copy_repo(work: Path, cache_dir: Path | None) -> None:
    """A fresh repository at `work`: the files a stage needs, git (DVC needs an SCM), and optionally a DVC cache
    shared with other rehearsals (hard links: no second copy of multi-GB outputs)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in COPY:
        src, dst = REPO / rel, work / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    commit_all(work, "rehearsal", init=True)  # DVCLive asks for HEAD
    if cache_dir is not None:
        (work / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache_dir}\n    type = \"hardlink,copy\"\n")


def commit_all(work: Path, message: str, init: bool = False) -> None:
    """`git add -A && git commit` (after `git init`), through dulwich (a DVC dependency) where git is missing."""
    who = "rehearsal <rehearsal@localhost>"
    if shutil.which("git"):
        env = {**os.environ, "GIT_AUTHOR_NAME": "rehearsal", "GIT_AUTHOR_EMAIL": "rehearsal@localhost",
               "GIT_COMMITTER_NAME": "rehearsal", "GIT_COMMITTER_EMAIL": "rehearsal@localhost"}
        for cmd in ([["init", "-q"]] if init else []) + [["add", "-A"], ["commit", "-qm", message, "--allow-empty"]]:
            subprocess.run(["git", *cmd], cwd=work, check=True, env=env, capture_output=True)
        return
    from dulwich import porcelain

    if init:
        porcelain.init(str(work))
    porcelain.add(str(work))
    porcelain.commit(str(work), message=message.encode(), author=who.encode(), committer=who.encode())


def stage_env(work: Path, peak_file: Path) -> dict[str, str]:
    hook = work / ".rehearsal" / "hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    shim = work / ".rehearsal" / "bin"  # dvc.yaml says `python`, DVC's queue spawns `dvc`: this interpreter's
    shim.mkdir(parents=True, exist_ok=True)
    for name, cmd in (("python", f'"{sys.executable}"'), ("dvc", f'"{sys.executable}" -m dvc')):
        (shim / name).write_text(f'#!/bin/sh\nexec {cmd} "$@"\n')
        (shim / name).chmod(0o755)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(work / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(shim), env.get("PATH", "")])
    env["LOFI_REHEARSAL_PEAK"] = str(peak_file)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def nvml_handles() -> tuple:
    """(pynvml, a handle per GPU), or (None, []) without NVML or a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:
        return None, []


class NvmlPeak:
    """GPU memory in use per device, sampled every 0.2 s (nothing without NVML or a GPU). Stages hold a GPU by a
    lock (lofi_lora.core.runtime.pick_device), so the peak of the GPU a stage used is that stage's own."""

    def __init__(self):
        self._nvml, self._handles = nvml_handles()
        self.peaks: list[int] = []
        self._stop = threading.Event()

    def __enter__(self):
        self.peaks = [0] * len(self._handles)
        self._stop.clear()
        if self._handles:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.2):
            for i, h in enumerate(self._handles):
                self.peaks[i] = max(self.peaks[i], self._nvml.nvmlDeviceGetMemoryInfo(h).used)

    def __exit__(self, *exc):
        self._stop.set()
        if self._handles:
            self._thread.join()
        return False

    def gib(self, devices: list[int]) -> float | None:
        vals = [self.peaks[d] for d in devices if d < len(self.peaks)]
        return round(max(vals) / GIB, 2) if vals else None


def read_peak(peak_file: Path) -> tuple[float | None, list[int]]:
    """(PyTorch's reserved peak over the stage's processes in GiB, the CUDA devices they used)."""
    if not peak_file.is_file():
        return None, []
    rows = [line.split() for line in peak_file.read_text().splitlines() if line.strip()]
    if not rows:
        return None, []
    return round(max(int(r[2]) for r in rows) / GIB, 2), sorted({int(r[1]) for r in rows})


def run_stage(stage: str, work: Path, logs: Path, nvml: NvmlPeak, kill_when=None) -> dict:
    """`dvc repro -s <stage>`: wall time, PyTorch's reserved peak, NVML's device peak; with `kill_when`, SIGKILL
    the process group as soon as `kill_when()` is true and return what was seen."""
    peak_file = logs / f"{stage}.peak"
    peak_file.unlink(missing_ok=True)
    log_path = logs / f"{stage}.log"
    with nvml, open(log_path, "a") as log_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", stage], cwd=work, stdout=log_f,
                                stderr=subprocess.STDOUT, env=stage_env(work, peak_file), start_new_session=True)
        killed = False
        while proc.poll() is None:
            if kill_when is not None and kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                proc.wait()
                break
            time.sleep(0.5)
        wall = time.perf_counter() - t0
    peak, devices = read_peak(peak_file)
    text = log_path.read_text(errors="replace")
    # a SIGKILLed process writes no peak, and a process whose compiled graphs reset the allocator's peak writes 0:
    # then the GPU it claimed (lofi_lora.core.runtime logs "using cuda:N") and NVML's figure for it are what is known
    devices = devices or sorted({int(d) for d in re.findall(r"using cuda:(\d+)", text)})
    rec = {"wall_s": round(wall, 1), "peak_gpu_gib": peak or None, "peak_gpu_used_gib": nvml.gib(devices)}
    timings = logged_timings(text)
    if timings is not None:
        rec["timings"] = timings
    if "skipping run" in text or "didn't change, skipping" in text:
        rec["dvc"] = "restored from the run-cache" if "skipping run" in text else "unchanged, skipped"
    if killed:
        rec["killed"] = True
    elif proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}); log {log_path}:\n" + "\n".join(tail))
    return rec


def logged_timings(log_text: str) -> dict | None:
    """The stage's last `<stage> timings (logged only, not versioned): {...}` line (lofi_lora.core.results)."""
    found = re.findall(r"timings \(logged only, not versioned\): (\{.*\})\s*$", log_text, flags=re.M)
    try:
        return ast.literal_eval(found[-1]) if found else None
    except (ValueError, SyntaxError):
        return None


def logged_losses(work: Path) -> dict[int, float]:
    tsv = work / "metrics" / "train" / "plots" / "metrics" / "loss.tsv"
    if not tsv.is_file():
        return {}
    rows = [ln.split("\t") for ln in tsv.read_text().splitlines()[1:] if ln.strip()]
    return {int(r[0]): float(r[1]) for r in rows if len(r) >= 2 and r[0].isdigit()}


def checkpoint_steps(work: Path) -> list[int]:
    manifest = work / "models" / "lora" / "checkpoints" / "manifest.json"
    try:
        return sorted(int(e["step"]) for e in json.loads(manifest.read_text()).get("checkpoints", []))
    except (OSError, ValueError, KeyError):
        return []


def train_with_kill(work: Path, logs: Path, nvml: NvmlPeak, kill_at: int) -> tuple[dict, dict]:
    """Train, SIGKILL once step `kill_at` is logged and a logged step lies past the newest checkpoint, train again;
    compare the losses of the steps the resumed run redoes."""
    def due() -> bool:
        losses, ckpts = logged_losses(work), checkpoint_steps(work)
        return bool(ckpts) and bool(losses) and max(losses) >= kill_at and max(ckpts) < max(losses)

    first = run_stage("train", work, logs, nvml, kill_when=due)
    if not first.get("killed"):
        return first, {"status": "not killed: training ended before step %d" % kill_at}
    before = logged_losses(work)
    ckpts_at_kill = checkpoint_steps(work)
    second = run_stage("train", work, logs, nvml)
    resumed = (second.get("timings") or {}).get("resumed_from")
    after = logged_losses(work)
    redone = sorted(s for s in before if resumed is not None and s > resumed and s in after)
    rel = [abs(after[s] - before[s]) / max(abs(before[s]), 1e-12) for s in redone]
    report = {"killed_after_step": max(before), "checkpoints_at_kill": ckpts_at_kill, "resumed_from": resumed,
              "redone_logged_steps": redone, "max_rel_loss_diff": max(rel) if rel else None,
              "first_run_wall_s": first["wall_s"], "resumed_run_wall_s": second["wall_s"]}
    report["status"] = ("exact" if rel and max(rel) <= 1e-3 else
                        "no redone step to compare" if not rel else "differs")
    merged = {"wall_s": round(first["wall_s"] + second["wall_s"], 1),
              "peak_gpu_gib": max(filter(None, [first["peak_gpu_gib"], second["peak_gpu_gib"]]), default=None),
              "peak_gpu_used_gib": max(filter(None, [first["peak_gpu_used_gib"], second["peak_gpu_used_gib"]]),
                                       default=None),
              "killed_and_resumed": True}
    return merged, report


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"cpu ({os.cpu_count()} cores)"


def build_native(size: str, dest: Path, presets: Path) -> dict:
    """A random-weight checkpoint in upstream's native layout at real size; returns what was built."""
    from lofi_lora.model.native.convert import build  # noqa: PLC0415 (on the GPU when there is one)

    name = build(dest, size=size, variant="turbo", presets_dir=presets)
    files = [f for f in (dest / name).iterdir() if f.suffix == ".safetensors"]
    return {"root": str(dest), "variant_dir": name, "dit_files": len(files),
            "dit_gb": round(sum(f.stat().st_size for f in files) / 1e9, 2)}


def take_data_stages(src: Path, work: Path) -> list[str]:
    """Copy (hard-link) the outputs of the data stages of the rehearsal at `src` and their dvc.lock entries, as a
    clone with `dvc pull` would have them: DVC then finds those stages unchanged (preprocess and annotate have
    persistent outputs, which DVC's run-cache does not restore)."""
    lock = yaml.safe_load((src / "dvc.lock").read_text())
    taken = [s for s in DATA_STAGES if s in lock.get("stages", {})]
    for stage in taken:
        for out in lock["stages"][stage].get("outs", []):
            a, b = src / out["path"], work / out["path"]
            if b.exists():
                shutil.rmtree(b) if b.is_dir() else b.unlink()
            b.parent.mkdir(parents=True, exist_ok=True)
            if a.is_dir():
                shutil.copytree(a, b, copy_function=_link_or_copy)
            elif a.is_file():
                _link_or_copy(a, b)
    own_f = work / "dvc.lock"
    own = yaml.safe_load(own_f.read_text()) if own_f.is_file() else {"schema": lock.get("schema", "2.0"), "stages": {}}
    own.setdefault("stages", {}).update({s: lock["stages"][s] for s in taken})
    own_f.write_text(yaml.safe_dump(own, sort_keys=False))
    return taken


def _link_or_copy(a, b) -> None:
    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


def wait_for(path: Path, timeout_s: float = 3600) -> None:
    t0 = time.perf_counter()
    while not path.exists():
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"waited {timeout_s:.0f} s for {path}")
        time.sleep(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--work", type=Path, required=True, help="fresh repository copy to run in (deleted first)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="native checkpoint root (built when missing)")
    ap.add_argument("--tracks", type=int, default=20)
    ap.add_argument("--seconds", type=float, nargs=2, default=(179.5, 179.5), metavar=("MIN", "MAX"),
                    help="track length (whole bars up to this, so 175.5-179.5 s: one 180 s padded shape)")
    ap.add_argument("--max-clip", type=float, default=180.0, help="audio.max_clip_s: a track is one clip")
    ap.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--kill-at-step", type=int, default=None, help="SIGKILL train once this step is logged")
    ap.add_argument("--cache-dir", type=Path, default=None, help="DVC cache shared with other rehearsals")
    ap.add_argument("--notify-after", nargs=2, default=None, metavar=("STAGE", "FILE"),
                    help="create FILE once STAGE is done (another rehearsal can --wait-for it)")
    ap.add_argument("--wait-for", type=Path, default=None, help="start the data stages once this file exists")
    ap.add_argument("--data-from", type=Path, default=None,
                    help="after --wait-for: take the data stages' outputs from this rehearsal's work folder")
    ap.add_argument("--early", nargs="*", default=[], help="stages to run first (base_model needs no data)")
    ap.add_argument("--memory-cap", type=float, default=None, metavar="GIB",
                    help="runtime.gpu_memory_gib: every GPU stage held to GIB, as on a card of that size")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "rehearsal.json")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (last wins)")
    args = ap.parse_args()

    spec = VARIANTS[args.variant]
    work = args.work.resolve()
    t_all = time.perf_counter()
    copy_repo(work, args.cache_dir.resolve() if args.cache_dir else None)
    logs = work / ".rehearsal" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(work / "src"))
    run: dict = {"variant": args.variant, "device": device_name(), "status": "running", "stages": {}, "work": str(work)}
    overrides = list(spec["model"])
    ckpt = None
    if spec["build"]:
        ckpt = (args.checkpoint or work.parent / f"native-{spec['build']}").resolve()
        overrides += [f"model.path={ckpt}"]
    overrides += corpus_overrides(args.tracks, tuple(args.seconds), args.max_clip, args.workers)
    overrides += spec["run"] + args.overrides
    if args.memory_cap is not None:
        overrides += [f"runtime.gpu_memory_gib={args.memory_cap:g}"]
        run["memory_cap_gib"] = args.memory_cap
    run["overrides"] = overrides
    (logs.parent / "overrides.json").write_text(json.dumps(overrides))  # benchmarks/queued_sweep.py repeats them
    env = stage_env(work, logs / "compose.peak")
    subprocess.run([sys.executable, "-m", "lofi_lora.core.params", *overrides], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    stages = list(yaml.safe_load((work / "dvc.yaml").read_text())["stages"])
    order = [s for s in args.early if s in stages] + [s for s in stages if s not in args.early]

    def build_checkpoint() -> None:  # just before base_model, so the data stages of another rehearsal start at once
        t0 = time.perf_counter()
        try:
            run["checkpoint"] = build_native(spec["build"], ckpt, work / "presets")
        except Exception as e:  # recorded like a failed stage
            raise RuntimeError(f"building the native {spec['build']} checkpoint failed: {e!r}") from e
        run["checkpoint"]["build_s"] = round(time.perf_counter() - t0, 1)
        print(f"built native {spec['build']} checkpoint: {run['checkpoint']}", flush=True)

    nvml = NvmlPeak()
    try:
        for stage in order:
            if stage == "base_model" and ckpt is not None:
                build_checkpoint()
            if args.wait_for and stage in DATA_STAGES:
                wait_for(args.wait_for)
                args.wait_for = None
                if args.data_from:
                    run["data_from"] = {"work": str(args.data_from), "stages": take_data_stages(args.data_from, work)}
            print(f"== {stage}", flush=True)
            if stage == "train" and args.kill_at_step:
                rec, run["kill_resume"] = train_with_kill(work, logs, nvml, args.kill_at_step)
            else:
                rec = run_stage(stage, work, logs, nvml)
            if args.memory_cap is not None and rec.get("peak_gpu_gib") is not None:
                rec["within_cap"] = rec["peak_gpu_gib"] <= args.memory_cap
            run["stages"][stage] = rec
            print(f"   {stage}: {rec}", flush=True)
            save(args.json, {**run, "total_wall_s": round(time.perf_counter() - t_all, 1)})
            if args.notify_after and stage == args.notify_after[0]:
                Path(args.notify_after[1]).touch()
        status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=work, env=env, capture_output=True,
                                text=True)
        run["dvc_status"] = status.stdout.strip()[-2000:]
        run["status"] = "ok"
        run["pipeline_wall_s"] = round(sum(r["wall_s"] for r in run["stages"].values()), 1)
    except RuntimeError as e:
        run["status"], run["error"] = "failed", str(e)[-4000:]
        print(e, file=sys.stderr, flush=True)
    finally:
        if args.notify_after:  # a waiting rehearsal then runs the data stages itself
            Path(args.notify_after[1]).touch()
    run["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    run["figures"] = figures(work)
    save(args.json, run)
    print(json.dumps({k: run[k] for k in ("variant", "status", "stages", "total_wall_s")}, indent=1), flush=True)
    if run["status"] == "failed":
        sys.exit(1)


def figures(work: Path) -> dict:
    """Headline numbers of the run's own metrics files (`{"<stage>": {...}}`; timings are in the stage records)."""
    out: dict = {}
    for name in ("data", "train", "eval", "export"):
        f = work / "metrics" / f"{name}.json"
        if f.is_file():
            out[name] = json.loads(f.read_text()).get(name)
    return out


def portable(record: dict, root: Path) -> dict:
    """`record` with the machine's work root written as `<work root>` (the file is versioned)."""
    return json.loads(json.dumps(record).replace(json.dumps(str(root))[1:-1], "<work root>"))


def save(path: Path, run: dict) -> None:
    """Merge `run` into the JSON file: one entry per (variant, device, memory cap), newest wins."""
    run = portable(run, Path(run["work"]).parent) if "work" in run else run
    data = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    ident = ("variant", "device", "memory_cap_gib")
    data["runs"] = [r for r in data["runs"] if [r.get(k) for k in ident] != [run.get(k) for k in ident]] + [run]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
