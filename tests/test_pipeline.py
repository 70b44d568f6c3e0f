"""The promise of the repo: a fresh clone reproduces every stage with `dvc repro`, and experiments recompose params.

These run the real pipeline (all stages, tiny model) in a throwaway clone, so they take minutes: marked slow.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lofi_lora.params import REPO_ROOT

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}


def _run(args, cwd, check=True):
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of the committed repo (what CI and a user get), reproduced once."""
    dst = tmp_path_factory.mktemp("clone") / "repo"
    _run(["git", "clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(dst)], cwd=REPO_ROOT)
    # the venv's python must run the stages: dvc.yaml calls `python`
    ENV["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{ENV['PATH']}"
    _run([DVC, "repro"], cwd=dst)
    return dst


def test_fresh_clone_reproduces_and_is_clean(clone):
    status = _run([DVC, "status", "--json"], cwd=clone)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    again = _run([DVC, "repro"], cwd=clone)
    assert "Running stage" not in again.stdout, again.stdout
    metrics = _run([DVC, "metrics", "show", "--json"], cwd=clone)
    assert "data.json" in metrics.stdout


def test_queued_sweep_runs_experiments_that_differ(clone):
    import time

    _run([DVC, "exp", "run", "--queue", "-S", "lora.alpha=4,16"], cwd=clone)
    _run([DVC, "queue", "start", "-j", "1"], cwd=clone)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = _run([DVC, "queue", "status"], cwd=clone).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") >= 2, status
    rows = json.loads(_run([DVC, "exp", "show", "--json"], cwd=clone).stdout)
    swept = {}
    for e in (e for rev in rows for e in (rev.get("experiments") or [])):
        data = e["revs"][0]["data"]
        alpha = data["params"]["params.yaml"]["data"]["lora"]["alpha"]
        if alpha in (4, 16):
            swept[e["name"]] = (alpha, data["metrics"]["metrics/eval.json"]["data"]["val_loss_best"])
    assert sorted(a for a, _ in swept.values()) == [4, 16], swept
    assert len({loss for _, loss in swept.values()}) == 2, swept  # different params, different metrics
    a, b = sorted(swept)
    diff = json.loads(_run([DVC, "metrics", "diff", a, b, "--json"], cwd=clone).stdout)
    assert "val_loss_best" in diff["metrics/eval.json"], diff


def test_exp_run_recomposes_params_and_reruns_only_affected_stages(clone):
    proc = _run([DVC, "exp", "run", "-S", "audio.max_clip_seconds=20", "-n", "clip20"], cwd=clone)
    ran = {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}
    assert "preprocess" in ran and "synth" not in ran and "ingest" not in ran and "base_model" not in ran, proc.stdout
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert params["audio"]["max_clip_seconds"] == 20
    shown = _run([DVC, "exp", "show", "--json"], cwd=clone).stdout
    assert "clip20" in shown and "max_clip_seconds" in shown


def test_stage_script_runs_alone_with_an_override(clone):
    proc = _run([sys.executable, "stages/preprocess.py", "audio.max_clip_seconds=20"], cwd=clone)
    clips = json.loads((clone / "data/clips/clips.json").read_text())["clips"]
    assert clips and max(c["duration_s"] for c in clips) <= 20.0 + 1e-6, proc.stderr[-2000:]
