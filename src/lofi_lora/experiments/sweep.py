"""Whole-chain sweeps: a Hydra multirun in which every job is one DVC experiment (`stages/sweep.py`).

Each job runs `dvc exp run --temp -n <sweep>-<job> -S <its overrides>`: DVC composes the job's params from `conf/`,
reruns only the stages those params touch (train -> evaluate -> export for a LoRA sweep) in a private copy of the
repo, and stores the result as an experiment (`dvc exp show`, `dvc exp branch`, `dvc metrics diff`). The job then
reads its own experiment commit (metrics, params, dvc.lock's adapter hash) and returns the headline metric chosen by
`sweep.metric`, so a search sweeper (Optuna) can optimise it. The sweep ends with one table (Markdown + JSON), a
plot of the metric against lora.r and lora.alpha, and a report page `index.html` in the sweep folder.
"""
from __future__ import annotations

import html
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from lofi_lora.core.fsutil import atomic_write_json, atomic_write_text
from lofi_lora.experiments.headline import HEADLINES, INTERVALS, better, headline_metrics

log = logging.getLogger(__name__)

ALWAYS = ("val_loss", "fd", "clap", "int4_cosine")  # shown even when empty: the reader sees what was not measured
SIGNIFICANCE_NOTE = ("FD and KAD: value [bootstrap 95% interval over clips]. `_sig`: best = lowest; worse = its interval "
                     "lies above the best job's (a difference beyond the noise); ~ = the intervals overlap (no "
                     "difference this table can claim). `_vs_base`: the job's best checkpoint minus its base, paired "
                     "bootstrap: better / worse beyond the interval, or ~.")


def job_overrides(task_overrides: Sequence[str]) -> list[str]:
    """The overrides DVC gets: the job's own, minus the sweep's settings and Hydra's."""
    return [o for o in task_overrides if not o.lstrip("+~").startswith(("sweep.", "hydra."))]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def _exp_rev(root: Path, name: str) -> str | None:
    """Commit of the experiment `name` (refs/exps/<baseline>/<name>), None when DVC made none."""
    for line in _git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/").splitlines():
        sha, ref = line.split(" ", 1)
        if ref.rsplit("/", 1)[-1] == name:
            return sha
    return None


def _show(root: Path, rev: str, path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def _lock_out_md5(lock: dict, stage: str, path: str) -> str | None:
    for out in ((lock.get("stages") or {}).get(stage) or {}).get("outs") or []:
        if os.path.normpath(out.get("path", "")) == os.path.normpath(path):
            return out.get("md5")
    return None


def experiment_row(root: Path, name: str, rev: str) -> dict[str, Any]:
    """One table row from an experiment commit: its params, headline metrics and adapter hashes (dvc.lock)."""
    params = yaml.safe_load(_show(root, rev, "params.yaml") or "{}") or {}
    lock = yaml.safe_load(_show(root, rev, "dvc.lock") or "{}") or {}
    metrics_dir = (params.get("paths") or {}).get("metrics", "metrics")
    lora_dir = (params.get("paths") or {}).get("lora", "models/lora")

    def read(file: str) -> Any:
        text = _show(root, rev, f"{metrics_dir}/{file}")
        return json.loads(text) if text else None

    lora = params.get("lora") or {}
    return {"experiment": name, "rev": rev[:7], "seed": params.get("seed"), "lora.r": lora.get("r"),
            "lora.alpha": lora.get("alpha"), **headline_metrics(read),
            "adapter": _lock_out_md5(lock, "train", f"{lora_dir}/final"),
            "best_adapter": _lock_out_md5(lock, "evaluate", f"{lora_dir}/best")}


def run_experiment(root: Path, name: str, overrides: Sequence[str], log_path: Path,
                   extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """`dvc exp run --temp` one job; its row, with `status` "ok" or "failed: <last line of DVC's error>"."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name, *extra_args,
           *[a for o in overrides for a in ("-S", o)]]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log.info("job %s: %s", name, " ".join(cmd[1:]))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f:  # DVC's and the stages' output, for `tail -f` while it runs
        proc = subprocess.run(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    rev = _exp_rev(root, name) if proc.returncode == 0 else None
    if rev is None:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "no output")
        log.error("job %s failed (see %s): %s", name, log_path, why)
        return {"experiment": name, "status": f"failed: {why.strip()[:200]}"}
    return {**experiment_row(root, name, rev), "status": "ok"}


# ------------------------------------------------------------------------------------------------ the table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return "-" if v is None else str(v)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of `rows` (columns in order of first appearance; None shows as -)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def best_index(rows: Sequence[dict[str, Any]], metric: str) -> int | None:
    """Row with the best finite `metric` (direction from `headline.better`), None when no row has one."""
    scored = [(i, r[metric]) for i, r in enumerate(rows) if isinstance(r.get(metric), (int, float))
              and math.isfinite(r[metric])]
    if not scored:
        return None
    pick = max if better(metric) == "max" else min
    return pick(scored, key=lambda t: t[1])[0]


def _interval(j: dict[str, Any], column: str) -> tuple[float, float] | None:
    lo, hi = j.get(f"{column}_low"), j.get(f"{column}_high")
    return (lo, hi) if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else None


def significance(jobs: Sequence[dict[str, Any]], column: str) -> list[str]:
    """Per job, how its `column` (lower is better) stands against the job best at it: "best", "~" (the intervals
    overlap: not a difference this table can claim) or "worse" (its interval lies above the best's). Overlap of two
    95% intervals is a conservative test: a pair marked "worse" differs at well under 5%."""
    ranked = [(j[column], i) for i, j in enumerate(jobs) if isinstance(j.get(column), (int, float))
              and _interval(j, column)]
    if not ranked:
        return ["" for _ in jobs]
    b = min(ranked)[1]
    best_high = _interval(jobs[b], column)[1]
    marks = []
    for i, j in enumerate(jobs):
        iv = _interval(j, column)
        marks.append("" if iv is None else "best" if i == b else "worse" if iv[0] > best_high else "~")
    return marks


def versus_base(j: dict[str, Any], column: str) -> str:
    """The job's best checkpoint against its base, from the paired interval of the difference."""
    lo, hi = j.get(f"{column}_vs_base_low"), j.get(f"{column}_vs_base_high")
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        return ""
    return "better" if hi < 0 else "worse" if lo > 0 else "~"


def _with_interval(j: dict[str, Any], column: str) -> str | None:
    iv = _interval(j, column)
    return None if j.get(column) is None else _fmt(j[column]) + (f" [{_fmt(iv[0])}, {_fmt(iv[1])}]" if iv else "")


def table_rows(jobs: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows people read: job, best mark, overrides, the headline columns that hold a value (and ALWAYS), hashes.
    FD and KAD show their interval, how each job stands against the best job (`fd_sig`) and whether its LoRA beat its
    base beyond the paired interval (`fd_vs_base`)."""
    b = best_index(jobs, metric)
    derived = {f"{c}_{end}" for c in INTERVALS for end in ("low", "high", "vs_base_low", "vs_base_high")}
    shown = [c for c in HEADLINES if c not in derived and (c in ALWAYS or any(j.get(c) is not None for j in jobs))]
    marks = {c: significance(jobs, c) for c in INTERVALS}
    common = common_overrides(jobs)
    rows = []
    for i, j in enumerate(jobs):
        adapter = (j.get("adapter") or "").removesuffix(".dir")[:10] or None
        own = " ".join(o for o in (j.get("overrides") or "").split() if o not in common)
        cells: dict[str, Any] = {}
        for c in shown:
            if c in INTERVALS:
                cells.update({c: _with_interval(j, c), f"{c}_sig": marks[c][i], f"{c}_vs_base": versus_base(j, c)})
            elif c.removesuffix("_vs_base") in INTERVALS:
                continue  # shown as the mark above; the figures stay in sweep.json
            else:
                cells[c] = j.get(c)
        rows.append({"job": j.get("job"), "best": "*" if i == b else "", "experiment": j.get("experiment"),
                     "overrides": own, **cells, "adapter": adapter, "status": j.get("status")})
    return rows


def common_overrides(jobs: Sequence[dict[str, Any]]) -> list[str]:
    """Overrides every job shares (printed once above the table, not in every row); none for a single job."""
    sets = [(j.get("overrides") or "").split() for j in jobs]
    if len(sets) < 2:
        return []
    return [o for o in sets[0] if all(o in s for s in sets[1:])]


def plot_metric(jobs: Sequence[dict[str, Any]], metric: str, path: Path) -> bool:
    """`metric` against lora.r, one line per lora.alpha, best marked; False when no job has the metric."""
    pts = [(j["lora.r"], j["lora.alpha"], j[metric]) for j in jobs
           if isinstance(j.get(metric), (int, float)) and math.isfinite(j[metric]) and j.get("lora.r") is not None]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for alpha in sorted({a for _, a, _ in pts}, key=float):
        line = sorted((r, v) for r, a, v in pts if a == alpha)
        ax.plot([r for r, _ in line], [v for _, v in line], marker="o", label=f"alpha={alpha}")
    b = best_index(jobs, metric)
    if b is not None and jobs[b].get("lora.r") is not None:
        ax.plot([jobs[b]["lora.r"]], [jobs[b][metric]], marker="*", markersize=16, color="k", linestyle="",
                label="best")
    if all(r > 0 for r, _, _ in pts):
        ax.set_xscale("log", base=2)
    ranks = sorted({r for r, _, _ in pts})
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()
    ax.set_xlabel("lora.r")
    ax.set_ylabel(metric + (f" ({better(metric)} is better)" if better(metric) else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _html_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr" + (' style="font-weight:bold"' if r.get("best") else "") + ">"
                   + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_summary(sweep_dir: Path, metric: str) -> list[dict[str, Any]]:
    """Collect every job's `job.json` under `sweep_dir`; write sweep.md, sweep.json, sweep.png and index.html."""
    from lofi_lora.evaluate.report import CSS

    jobs = [json.loads(f.read_text()) for f in sorted(sweep_dir.glob("*/job.json"),
                                                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)]
    if not jobs:
        return []
    rows = table_rows(jobs, metric)
    b = best_index(jobs, metric)
    promote = (f"dvc exp branch {jobs[b]['experiment']} exp/{jobs[b]['experiment']}" if b is not None else None)
    common = " ".join(common_overrides(jobs))
    table = (f"every job: {common}\n\n" if common else "") + markdown_table(rows)
    atomic_write_text(sweep_dir / "sweep.md", f"# sweep {sweep_dir.name}: best by {metric} marked *\n\n{table}"
                      + f"\n{SIGNIFICANCE_NOTE}\n"
                      + (f"\nPromote the best: `{promote}`\n" if promote else ""))
    atomic_write_json(sweep_dir / "sweep.json", {"metric": metric, "better": better(metric), "best": b,
                                                 "promote": promote, "jobs": jobs})
    has_plot = plot_metric(jobs, metric, sweep_dir / "sweep.png")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sweep {html.escape(sweep_dir.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>Sweep {html.escape(sweep_dir.name)}</h1>"
            f"<p>One row per job, each a DVC experiment (<code>dvc exp show</code>). Best by "
            f"<b>{html.escape(metric)}</b> ({better(metric) or '-'} is better) in bold. "
            "adapter = dvc.lock hash of the job's models/lora/final."
            + (f" Every job: <code>{html.escape(common)}</code>." if common else "") + "</p>" + _html_table(rows)
            + (f"<p>Promote the best: <code>{html.escape(promote)}</code></p>" if promote else "")
            + ("<img src='sweep.png' alt='metric against lora.r and lora.alpha'>" if has_plot else
               f"<p>No job has a value of {html.escape(metric)} to plot.</p>") + "</body></html>\n")
    atomic_write_text(sweep_dir / "index.html", page)
    print(f"\nsweep summary ({sweep_dir / 'sweep.md'}, report {sweep_dir / 'index.html'}):\n{table}")
    if promote:
        print(f"best by {metric}: {jobs[b]['experiment']}; promote it with: {promote}")
    return rows


# ------------------------------------------------------------------------------------------------ the Hydra app


def run_sweep(root: Path) -> None:
    """The Hydra app of `stages/sweep.py`: primary config `conf/sweep.yaml` (or `--config-name sweep_optuna`)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    state: dict[str, Any] = {}

    @hydra.main(config_path=str(root / "conf"), config_name="sweep", version_base=None)
    def _app(cfg) -> float:
        hc = HydraConfig.get()
        metric = str(cfg.sweep.metric)
        if metric not in HEADLINES:
            raise ValueError(f"sweep.metric={metric}: choose one of {sorted(HEADLINES)}")
        num = hc.job.num if hc.mode == RunMode.MULTIRUN else 0
        out_dir = Path(hc.runtime.output_dir)
        sweep_dir = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else out_dir.parent
        state.update(dir=sweep_dir, metric=metric)
        overrides = job_overrides(hc.overrides.task)
        # the name comes from the folder, made once per sweep (each job's ${now:} would resolve anew)
        row = run_experiment(root, f"{sweep_dir.name}-{num}", overrides, out_dir / "dvc.log",
                             [str(a) for a in cfg.sweep.dvc_args])
        row = {"job": num, "overrides": " ".join(overrides), **row}
        atomic_write_json(out_dir / "job.json", row)
        value = row.get(metric)
        return float(value) if isinstance(value, (int, float)) else float("nan")

    _app()
    if "dir" in state:
        write_summary(state["dir"], state["metric"])
