"""A stage run by hand under `-m` reads only its own job's files, or main files DVC vouches for, or refuses.

A two-stage DVC pipeline in a throwaway repo (a writes from param x, b reads a and param y), run for real by DVC.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lofi_lora.experiments import multirun
from lofi_lora.experiments.multirun import JobRefused, enter_job, job_key

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
DVC_YAML = """\
stages:
  a:
    cmd: mkdir -p out/a && python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['x'])" > out/a/v.txt
    params: [x]
    outs: ["${paths.a}"]
  b:
    cmd: mkdir -p out/b && cat out/a/v.txt > out/b/v.txt
    deps: ["${paths.a}"]
    params: [y]
    outs: ["${paths.b}"]
"""


def _run(args, cwd):
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("mr") / "repo"
    root.mkdir()
    (root / "params.yaml").write_text("paths:\n  a: out/a\n  b: out/b\nx: 1\ny: 1\n")
    (root / "dvc.yaml").write_text(DVC_YAML)
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    ENV["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{ENV['PATH']}"
    _run([sys.executable, "-m", "dvc", "repro", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "pipeline"], root)
    return root


@pytest.fixture
def cfg_for(repo):
    multirun._dvc_status.cache_clear()

    def make(**over):
        cfg = OmegaConf.load(repo / "params.yaml")
        for k, v in over.items():
            OmegaConf.update(cfg, k, v)
        return cfg

    yield make
    multirun._dvc_status.cache_clear()


def test_stage_refuses_when_its_upstream_ran_with_other_params(repo, cfg_for):
    with pytest.raises(JobRefused) as e:
        enter_job(repo, "b", cfg_for(x=2), ["x=2"])
    msg = str(e.value)
    assert "python stages/a.py -m x=2" in msg and "other x" in msg, msg
    assert not (repo / "multirun" / "jobs" / "x=2" / "out").exists()  # nothing linked to the main run


def test_upstream_untouched_by_the_overrides_comes_from_main_run(repo, cfg_for):
    cfg = cfg_for(y=5)
    job = enter_job(repo, "b", cfg, ["y=5"])
    link = job.dir / "out" / "a"
    assert link.is_symlink() and link.resolve() == (repo / "out" / "a").resolve()
    assert Path(cfg.paths.b) == job.dir / "out" / "b" and Path(cfg.paths.a) == link
    assert enter_job(repo, "b", cfg_for(y=5), ["y=5"]).dir == job.dir and link.is_symlink()  # again: link renewed
    # the same job then running `a` writes a real folder, never through the link into the main run
    job_a = enter_job(repo, "a", cfg_for(y=5), ["y=5"])
    assert not link.is_symlink() and (repo / "out" / "a" / "v.txt").read_text().strip() == "1"
    assert job_a.dir == job.dir


def test_stage_finds_the_outputs_of_the_same_job_of_the_stage_before(repo, cfg_for):
    cfg = cfg_for(x=3)
    job = enter_job(repo, "a", cfg, ["x=3"])
    (Path(cfg.paths.a)).mkdir(parents=True)
    (Path(cfg.paths.a) / "v.txt").write_text("3\n")
    job.finish()
    cfg_b = cfg_for(x=3)
    enter_job(repo, "b", cfg_b, ["x=3"])
    assert (Path(cfg_b.paths.a) / "v.txt").read_text() == "3\n"
    assert not Path(cfg_b.paths.a).is_symlink()
    record = json.loads((job.dir / multirun.RECORD).read_text())
    assert record["a"]["params"] == {"x": 3} and "b" not in record  # b is recorded only once it succeeded
    # rerunning `a` in that job drops b's record and files: they no longer belong to this job
    job_b = multirun.Job(repo, job.dir, "b", {"y": 1}, ["x=3"])
    (Path(cfg_b.paths.b)).mkdir(parents=True)
    (Path(cfg_b.paths.b) / "v.txt").write_text("3\n")
    job_b.finish()
    enter_job(repo, "a", cfg_for(x=3), ["x=3"])
    record = json.loads((job.dir / multirun.RECORD).read_text())
    assert "a" not in record and "b" not in record and not Path(cfg_b.paths.b).exists()


def test_main_outputs_changed_since_dvc_lock_are_refused(repo, cfg_for):
    v = repo / "out" / "a" / "v.txt"
    original = v.read_text()
    v.chmod(0o644)
    v.write_text("edited by hand\n")
    try:
        with pytest.raises(JobRefused, match="dvc status"):
            enter_job(repo, "b", cfg_for(y=7), ["y=7"])
    finally:
        v.write_text(original)


def test_job_key_is_stable_readable_and_filename_safe():
    assert job_key(["train.max_steps=20", "lora.r=4"]) == job_key(["lora.r=4", "train.max_steps=20"]) \
        == "lora.r=4,train.max_steps=20"
    odd = job_key(["model.path=/x/y", "hydra.job.chdir=false"])
    assert "/" not in odd and "hydra" not in odd and len(odd) <= 71
    assert job_key([]) == "no-overrides"
