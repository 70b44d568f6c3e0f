"""Sweeps whose numbers belong to their own job: the whole-chain sweep (each job a DVC experiment) and stage
scripts under `-m`, on the embedded default in a throwaway clone (tiny steps; slow: real training and export)."""
import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from helpers.clone import DVC, copy_of, tree
from helpers.clone import run as _run
from lofi_lora.experiments.headline import HEADLINES, headline_metrics
from lofi_lora.experiments.multirun import job_key
from lofi_lora.core.params import REPO_ROOT

# README "Sweeps" prints this command; the test runs it as printed
SWEEP = ("python stages/sweep.py -m lora.r=2,8 train.max_steps=4 train.checkpoint_every=2 eval.last_n=1 "
         "eval.num_prompts=1 'eval.seeds=[0]' 'export.precisions=[fp32,int4]'")
TINY = ["train.max_steps=4", "train.checkpoint_every=2", "eval.last_n=1", "eval.num_prompts=1", "eval.seeds=[0]"]


def _py(cmd: str) -> list[str]:
    args = shlex.split(cmd)
    return [sys.executable, *args[1:]] if args[0] == "python" else args


@pytest.fixture(scope="module")
def clone(reproduced_clone, tmp_path_factory):
    """This module's copy of the fresh, reproduced clone: the sweep jobs rerun train, evaluate and export."""
    return copy_of(reproduced_clone, tmp_path_factory.mktemp("sweep") / "repo")


def _cached_adapter_rank(repo: Path, dir_hash: str) -> int:
    """Rank of the LoRA in the DVC cache object `dir_hash` ("<md5>.dir" of models/lora/final): a row's adapter."""
    from safetensors import safe_open

    cache = repo / ".dvc" / "cache" / "files" / "md5"
    listing = json.loads((cache / dir_hash[:2] / dir_hash[2:]).read_text())
    entry = next(e for e in listing if e["relpath"].endswith(".safetensors"))
    with safe_open(str(cache / entry["md5"][:2] / entry["md5"][2:]), "pt") as f:
        key = next(k for k in f.keys() if "lora_A" in k)
        return int(f.get_slice(key).get_shape()[0])


def test_readme_prints_the_sweep_command_this_test_runs():
    assert SWEEP in (REPO_ROOT / "README.md").read_text()


@pytest.mark.slow
def test_two_job_sweep_gives_each_job_its_own_adapter_metrics_and_experiment(clone):
    before = _run(["git", "status", "--porcelain"], cwd=clone).stdout
    proc = _run(_py(SWEEP), cwd=clone)
    sweep_dir = max((clone / "multirun" / "sweeps").iterdir(), key=lambda p: p.stat().st_mtime)
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    jobs = summary["jobs"]
    assert [j["status"] for j in jobs] == ["ok", "ok"], jobs
    assert [j["lora.r"] for j in jobs] == [2, 8] and [j["overrides"].split()[0] for j in jobs] == ["lora.r=2", "lora.r=8"]
    assert "every job: train.max_steps=4" in (sweep_dir / "sweep.md").read_text()
    assert jobs[0]["adapter"] != jobs[1]["adapter"], jobs
    # each job scored its own adapter: the validation losses differ (FD to its 5 significant digits may not, after
    # 4 steps), and both FDs were computed
    assert jobs[0]["val_loss"] != jobs[1]["val_loss"] and None not in (jobs[0]["fd"], jobs[1]["fd"]), jobs
    for j in jobs:  # each row traces to its own adapter: the dvc.lock hash in the row is a rank-r LoRA in the cache
        assert _cached_adapter_rank(clone, j["adapter"]) == j["lora.r"], j
        # INT4 per call on the pretrained default: about 0.98 (a diagnostic; the audio gate keeps it, issue 29)
        assert j["best_step"] == 4 and 0.95 < j["int4_cosine"] <= 1.0, j
    assert summary["best"] in (0, 1) and summary["promote"].startswith(f"dvc exp branch {jobs[summary['best']]['experiment']}")
    table = (sweep_dir / "sweep.md").read_text()
    assert table.count("| * |") == 1 and "val_loss" in table and "int4_cosine" in table, table
    assert (sweep_dir / "sweep.png").stat().st_size > 1000 and "sweep.png" in (sweep_dir / "index.html").read_text()
    assert "sweep summary" in proc.stdout

    # the experiments are DVC's: exp show lists them with their params, metrics diff compares them
    shown = json.loads(_run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=clone).stdout)
    names = {e["name"]: e["revs"][0]["data"] for rev in shown for e in (rev.get("experiments") or [])}
    file, key, _ = HEADLINES["val_loss"]  # the metrics files' names live in lofi_lora.experiments.headline alone
    for j in jobs:
        data = names[j["experiment"]]
        assert data["params"]["params.yaml"]["data"]["lora"]["r"] == j["lora.r"]
        shown_metrics = {f.split("/")[-1]: m["data"] for f, m in data["metrics"].items()}
        assert headline_metrics(shown_metrics.get)["val_loss"] == j["val_loss"]
    diff = json.loads(_run([sys.executable, "-m", "dvc", "metrics", "diff", jobs[0]["experiment"], jobs[1]["experiment"],
                            "--json"], cwd=clone).stdout)
    assert key in next(v for f, v in diff.items() if f.endswith(file)), diff
    assert _run(["git", "status", "--porcelain"], cwd=clone).stdout == before  # the workspace was not touched


@pytest.mark.slow
def test_stage_under_multirun_refuses_without_its_job_of_the_stage_before_then_uses_it(clone):
    over = ["lora.r=2,8", *TINY]
    main_run = tree(clone / "models")  # the main run's adapter, checkpoints, samples and ONNX files
    refused = _run([sys.executable, "stages/evaluate.py", "-m", *over], cwd=clone, check=False)
    assert refused.returncode != 0 and "python stages/train.py -m" in refused.stderr, refused.stderr[-3000:]
    assert tree(clone / "models") == main_run  # nothing scored, nothing written to the main run

    _run([sys.executable, "stages/train.py", "-m", *over], cwd=clone)
    scored = _run([sys.executable, "stages/evaluate.py", "-m", *over], cwd=clone)
    jobs = clone / "multirun" / "jobs"
    evals = {r: json.loads((jobs / job_key([f"lora.r={r}", *TINY]) / "metrics" / "eval.json").read_text())
             for r in (2, 8)}
    evals = {r: e["eval"] for r, e in evals.items()}
    assert evals[2]["best_step"] == 4 and evals[8]["best_step"] == 4  # this job's 4-step checkpoints
    assert evals[2]["val_loss"] != evals[8]["val_loss"]
    assert tree(clone / "models") == main_run, "a multirun stage wrote into the main run"
    assert "val_loss" in scored.stdout and "multirun summary" in scored.stdout

    # export with an override evaluate never saw: its `best/` would not be this job's, so it refuses
    refused = _run([sys.executable, "stages/export.py", "-m", "lora.r=2", *TINY, "lora.alpha=2"], cwd=clone, check=False)
    assert refused.returncode != 0 and "python stages/evaluate.py -m" in refused.stderr, refused.stderr[-3000:]
    yaml.safe_load((clone / "params.yaml").read_text())  # params.yaml untouched and valid


# README "Sweep members on several machines": each machine runs its share and pushes it; any clone pulls them all
MEMBER = ["-S", "train.max_steps=4", "-S", "train.checkpoint_every=2"]


@pytest.mark.slow
def test_sweep_members_run_on_two_machines_meet_in_one_exp_show(reproduced_clone, tmp_path):
    """Two clones of a shared bare git remote (and a shared DVC remote folder) each run one member with `dvc exp run`
    and `dvc exp push origin`; a third clone `dvc exp pull`s both and `dvc exp show` lists them with their own params
    and metrics. The members run to stage train (`dvc exp run ... train`: seconds on the CPU; the recipe is the same
    for the whole pipeline)."""
    readme = (REPO_ROOT / "README.md").read_text()
    assert "dvc exp push origin" in readme and "dvc exp pull origin" in readme
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    first = copy_of(reproduced_clone, tmp_path / "first")
    # once: the shared remotes, the DVC remote in the committed config, the outputs the members start from pushed
    _run(["git", "clone", "-q", "--bare", str(first), str(origin)], cwd=tmp_path)
    _run(["git", "remote", "set-url", "origin", str(origin)], cwd=first)
    _run([DVC, "remote", "add", "-d", "shared", str(storage)], cwd=first)
    _run(["git", "commit", "-qm", "DVC remote for sweeps", ".dvc/config"], cwd=first)
    _run(["git", "push", "-q", "origin", "HEAD"], cwd=first)
    _run([DVC, "push", "-q"], cwd=first)

    for machine, r in (("a", 2), ("b", 8)):  # each machine: a clone, its share, pushed back
        repo = tmp_path / machine
        _run(["git", "clone", "-q", str(origin), str(repo)], cwd=tmp_path)
        _run([DVC, "pull", "-q"], cwd=repo)
        _run([DVC, "exp", "run", "-n", f"r{r}", "-S", f"lora.r={r}", *MEMBER, "train"], cwd=repo)
        _run([DVC, "exp", "push", "origin"], cwd=repo)

    collector = tmp_path / "c"
    _run(["git", "clone", "-q", str(origin), str(collector)], cwd=tmp_path)
    _run([DVC, "exp", "pull", "origin"], cwd=collector)
    shown = json.loads(_run([DVC, "exp", "show", "--json"], cwd=collector).stdout)
    exps = {e["name"]: e["revs"][0]["data"] for rev in shown for e in (rev.get("experiments") or [])}
    assert set(exps) == {"r2", "r8"}, exps
    losses = {}
    for name, data in exps.items():
        assert data["params"]["params.yaml"]["data"]["lora"]["r"] == int(name[1:])
        train = next(m["data"] for f, m in data["metrics"].items() if f.endswith("train.json"))
        assert train["train"]["steps"] == 4, train
        losses[name] = train["train"]["loss"]
    assert losses["r2"] != losses["r8"], losses
    # the members' adapters came with them: the DVC remote gave the collector each one's outputs
    _run([DVC, "exp", "apply", "r8"], cwd=collector)
    _run([DVC, "checkout"], cwd=collector)
    assert _cached_adapter_rank(collector, _lock_hash(collector, "train", "final")) == 8


def _lock_hash(repo: Path, stage: str, out_suffix: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"].endswith(out_suffix))
