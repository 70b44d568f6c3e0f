"""Hydra multirun jobs of single stages: every job's files belong to that job, or the stage refuses.

`python stages/<stage>.py -m k=a,b` runs one job per value. A job's folder is named after its overrides
(`multirun/jobs/<overrides>/`), so the jobs of the next stage run with the same overrides find it. Every path that
dvc.yaml names for any stage is rebased under that folder. Before a stage runs, each of its inputs made by an
earlier stage is taken
  1. from the job folder, when that stage ran there with this job's values of its params (`stages.json`), or
  2. from the main workspace (linked into the job folder), when dvc.lock records that the stage and every stage
     before it ran with exactly this job's values and `dvc status` finds their outputs unchanged;
otherwise the stage refuses and names the commands to run first. Numbers never come from another run's files.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from lofi_lora.core.errors import ConfigError
from lofi_lora.core.fsutil import atomic_write_json

_EXPR = re.compile(r"\$\{([^}]+)\}")
RECORD = "stages.json"


class JobRefused(ConfigError):
    """A stage under `-m` lacks this job's outputs of an earlier stage; the message names what to run."""


@dataclass(frozen=True)
class Stage:
    """One dvc.yaml stage: its declared params and the path expressions it reads and writes."""

    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]


def load_stages(root: Path) -> dict[str, Stage]:
    """The stages of `root/dvc.yaml` in file order (which is an order the pipeline can run in)."""
    raw = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]

    def names(entries: Iterable[Any]) -> tuple[str, ...]:
        return tuple(e if isinstance(e, str) else next(iter(e)) for e in entries)

    return {name: Stage(name, names(s.get("params", [])), names(s.get("deps", [])),
                        names([*s.get("outs", []), *s.get("metrics", []), *s.get("plots", [])]))
            for name, s in raw.items()}


def path_keys(stages: dict[str, Stage]) -> list[str]:
    """Config keys whose values are paths some stage reads or writes (`${paths.lora}` -> `paths.lora`)."""
    keys = {k for s in stages.values() for e in (*s.deps, *s.outs) for k in _EXPR.findall(e)}
    return sorted(keys)


def resolve(expr: str, cfg: Any) -> str:
    from omegaconf import OmegaConf

    return _EXPR.sub(lambda m: str(OmegaConf.select(cfg, m.group(1))), expr)


def _under(a: str, b: str) -> bool:
    """True when path `a` is `b` or inside it (both repo-relative, normalised)."""
    a, b = os.path.normpath(a), os.path.normpath(b)
    return a == b or a.startswith(b + os.sep)


def producers(stages: dict[str, Stage], cfg: Any) -> dict[str, dict[str, str]]:
    """For each stage: dep expression -> the stage that writes it (deps nobody writes are sources)."""
    outs = [(s.name, resolve(o, cfg)) for s in stages.values() for o in s.outs]
    result: dict[str, dict[str, str]] = {}
    for s in stages.values():
        result[s.name] = {}
        for d in s.deps:
            if "${" not in d:
                continue  # code and other tracked files: the same for every job
            path = resolve(d, cfg)
            owner = next((n for n, o in outs if n != s.name and (_under(path, o) or _under(o, path))), None)
            if owner:
                result[s.name][d] = owner
    return result


def ancestors(name: str, prod: dict[str, dict[str, str]]) -> list[str]:
    """Stages whose outputs `name` depends on, directly or not (unordered)."""
    seen: list[str] = []
    todo = list(prod[name].values())
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.append(s)
            todo.extend(prod[s].values())
    return seen


def job_key(overrides: Sequence[str]) -> str:
    """Folder name of a job: its sorted overrides, readable; hashed when long or not filename-safe."""
    text = ",".join(sorted(o for o in overrides if not o.startswith("hydra.")))
    if not text:
        return "no-overrides"
    safe = re.sub(r"[^A-Za-z0-9._=,+\[\]-]", "_", text)
    if safe != text or len(safe) > 100:
        safe = f"{safe[:60]}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
    return safe


def param_values(cfg: Any, keys: Iterable[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    out = {}
    for k in keys:
        v = OmegaConf.select(cfg, k)
        out[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    return out


def _same(a: Any, b: Any) -> bool:
    """Equality of params as YAML writers spell them (1.0e-4 and 0.0001; 1 and 1.0)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def _differing(want: dict[str, Any], have: dict[str, Any] | None) -> list[str]:
    """Param keys (dotted, down to the leaf) whose values differ; all of `want` when `have` is None."""
    if have is None:
        return list(want)
    diff = []
    for k, v in want.items():
        h = have.get(k)
        if isinstance(v, dict) and isinstance(h, dict):
            diff += [f"{k}.{d}" for d in _differing(v, h)]
        elif not _same(v, h):
            diff.append(k)
    return diff


@functools.lru_cache(maxsize=4)
def _dvc_status(root: str) -> dict[str, list]:
    """`dvc status --json` of the main workspace, once per process (every job of a sweep shares it)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"*": [f"dvc status failed: {proc.stderr.strip()[-300:]}"]}
    return json.loads(proc.stdout or "{}")


def main_problems(root: Path, stage: str, cfg: Any, stages: dict[str, Stage], prod) -> list[str]:
    """Why the main workspace's outputs of `stage` are not this job's (empty list: they are)."""
    lock = (yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {}) if (root / "dvc.lock").exists() else {}
    status = _dvc_status(str(root))
    problems = []
    for name in [stage, *ancestors(stage, prod)]:
        if name not in lock:
            problems.append(f"dvc.lock has no run of `{name}`")
            continue
        have = (lock[name].get("params") or {}).get("params.yaml") or {}
        diff = _differing(param_values(cfg, stages[name].params), have)
        if diff:
            problems.append(f"dvc.lock's `{name}` ran with other " + ", ".join(diff[:4]) + (" ..." if len(diff) > 4 else ""))
        changed = [c for entry in status.get(name, []) + status.get("*", [])
                   for c in (entry if isinstance(entry, dict) else {entry: None}) if c != "changed params"]
        if changed:
            problems.append(f"`dvc status` reports {', '.join(changed)} for `{name}`")
    return problems


def _read_record(job_dir: Path) -> dict[str, Any]:
    f = job_dir / RECORD
    return json.loads(f.read_text()) if f.exists() else {}


def _descendants(name: str, prod) -> set[str]:
    return {s for s in prod if name in ancestors(s, prod)}


def _link(link: Path, target: Path, job_dir: Path) -> None:
    """Point `link` (inside the job folder) at `target` (main workspace), replacing what was there."""
    if not link.parent.resolve().is_relative_to(job_dir) or os.path.abspath(link) == os.path.abspath(target):
        raise JobRefused(f"refusing to link {link} -> {target}: the link must lie inside {job_dir}")
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=target.is_dir())


@dataclass
class Job:
    """A stage about to run in a job folder; `finish` records it once it succeeded."""

    root: Path
    dir: Path
    stage: str
    params: dict[str, Any]
    overrides: list[str]

    def finish(self) -> None:
        rec = _read_record(self.dir)
        rec[self.stage] = {"params": self.params, "overrides": self.overrides,
                           "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_json(self.dir / RECORD, rec)


def enter_job(root: Path, stage: str, cfg: Any, overrides: Sequence[str]) -> Job:
    """Rebase `cfg`'s paths under this job's folder and make every input this job's own; or raise JobRefused.

    Mutates `cfg` (its path keys). The job folder is `root/multirun/jobs/<job_key(overrides)>`.
    """
    from omegaconf import OmegaConf, open_dict

    stages = load_stages(root)
    if stage not in stages:
        raise ConfigError(f"`{stage}` is not a stage of dvc.yaml")
    overrides = [o for o in overrides if not o.startswith("hydra.")]
    job_dir = (root / "multirun" / "jobs" / job_key(overrides)).resolve()
    prod = producers(stages, cfg)  # on the main paths: who writes what
    record = _read_record(job_dir)

    # inputs: this job's own, or main outputs made with the same values, or a refusal
    links: list[str] = []
    missing: dict[str, str] = {}
    for dep in (d for d in stages[stage].deps if "${" in d):
        owner = prod[stage].get(dep)
        main_path = resolve(dep, cfg)
        if os.path.isabs(main_path):
            continue  # a path the overrides chose outside the repo: read as given, never rebased or linked
        if owner is None:
            links.append(main_path)  # a source (presets, local raw audio): shared by every job
            continue
        mine = record.get(owner)
        if mine and not _differing(param_values(cfg, stages[owner].params), mine["params"]):
            if not (job_dir / main_path).exists():
                missing[owner] = f"{job_dir / main_path} is gone"
            continue
        problems = main_problems(root, owner, cfg, stages, prod)
        if problems:
            missing[owner] = "; ".join(problems)
        else:
            links.append(main_path)
    if missing:
        needed = set(missing) | {a for m in missing for a in ancestors(m, prod)
                                 if not _valid(root, a, cfg, stages, prod, record)}
        todo = [s for s in stages if s in needed]
        cmd = " ".join(["-m", *map(shlex.quote, overrides)])
        steps = "\n".join(f"  python stages/{s}.py {cmd}" for s in todo)
        raise JobRefused(
            f"stage `{stage}` under -m: this job ({', '.join(overrides) or 'no overrides'}) has no outputs of "
            f"{', '.join(f'`{m}`' for m in missing)} made with its params, and the main run's are not its own ("
            + " | ".join(f"{m}: {why}" for m, why in missing.items())
            + f").\nRun first, with the same overrides (outputs go to multirun/jobs/{job_dir.name}/):\n{steps}\n"
            f"or the whole chain per job as DVC experiments: python stages/sweep.py {cmd}\n"
            f"(where only the main run is out of date, `dvc repro {todo[-1]}` brings it back)")
    for rel in links:
        target = root / rel
        if not target.exists():
            raise JobRefused(f"stage `{stage}` needs {rel}, which does not exist: run `dvc repro {stage}` "
                             "(or its earlier stages) first")
        _link(job_dir / rel, target, job_dir)

    # outputs: real files in the job folder (a link left from an earlier stage is removed, never written through)
    for out in stages[stage].outs:
        rel = resolve(out, cfg)
        if os.path.isabs(rel):
            continue  # written where the overrides said
        p = job_dir / rel
        if p.is_symlink():
            p.unlink()
        through = next((job_dir / q for q in Path(rel).parents if (job_dir / q).is_symlink()), None)
        if through is not None:
            raise JobRefused(f"stage `{stage}` would write {p} through the link {through}; remove {job_dir} and rerun")
    for s in [stage, *_descendants(stage, prod)]:
        record.pop(s, None)  # outputs made from this stage's previous run are no longer this job's
        if s != stage:       # ... so later stages' files go too: no table shows them beside the new run
            for out in (resolve(o, cfg) for o in stages[s].outs):
                p = job_dir / out
                if not os.path.isabs(out) and (p.is_symlink() or p.is_file()):
                    p.unlink()
                elif not os.path.isabs(out) and p.is_dir():
                    shutil.rmtree(p)
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job_dir / RECORD, record)

    params = param_values(cfg, stages[stage].params)
    with open_dict(cfg):
        for key in path_keys(stages):
            value = OmegaConf.select(cfg, key)
            if value is not None and not os.path.isabs(str(value)):
                OmegaConf.update(cfg, key, str(job_dir / str(value)), merge=False)
    return Job(root, job_dir, stage, params, overrides)


def _valid(root: Path, name: str, cfg: Any, stages, prod, record) -> bool:
    """`name`'s outputs for this job exist: in the job folder with its params, or main with the same values."""
    mine = record.get(name)
    if mine and not _differing(param_values(cfg, stages[name].params), mine["params"]):
        return True
    return not main_problems(root, name, cfg, stages, prod)
