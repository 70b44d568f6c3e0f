"""Issue 15's done-when, automated: the hostile folder through the README recipe and `dvc exp run -S data=local`.

A fresh clone gets the hostile folder (tests/hostile_folder.py) under data/raw/local, runs the "Your own music"
data steps (rawfiles, dvc add, commit) and `dvc exp run -S data=local annotate` (ingest, preprocess, annotate:
every stage that names files after track ids). Slow: minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.clone import tree
from hostile_folder import build, outcomes
from lofi_lora.core.params import REPO_ROOT

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))
AUDIO = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    outer = tmp_path_factory.mktemp("hostile")
    repo = outer / "a" / "b" / "repo"  # ../../../../ESCAPED from data/clips/wav would land in `outer/a`
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo / "src")}  # the clone's code, whatever the venv has installed

    def run(*args):
        proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(repo)], check=True)
    expected = build(repo / "data" / "raw" / "local", repo / "data" / "metadata")
    expected = {Path(k).relative_to(repo).as_posix(): v for k, v in expected.items()}
    outside, raw = tree(outer, skip=repo), tree(repo / "data" / "raw" / "local")
    run(sys.executable, "-m", "lofi_lora.ingest.rawfiles", "data/raw/local")
    run(DVC, "add", "data/raw/local")
    run("git", "add", "data/raw/local.dvc", "data/raw/.gitignore", ".dvcignore", "data/metadata")
    run("git", "commit", "-qm", "data: the hostile folder")
    run(DVC, "exp", "run", "-S", "data=local", "annotate")
    return repo, outer, expected, outside, raw, run


def test_every_bad_file_is_quarantined_with_its_reason_and_good_ones_reach_the_clips(hostile_run):
    repo, _, expected, _, _, _ = hostile_run
    got = outcomes(repo / "data" / "interim", repo / "data" / "clips")
    assert got == expected
    clips = json.loads((repo / "data" / "clips" / "clips.json").read_text())["clips"]
    assert all((repo / c["wav"]).is_file() and (repo / c["mp3"]).is_file() for c in clips)
    sidecars = sorted(p.name for p in (repo / "data" / "annotations").glob("*.json"))
    assert sidecars == sorted(f"{c['clip_id']}.json" for c in clips)


def test_nothing_is_written_outside_the_repo_and_raw_files_are_unchanged(hostile_run):
    repo, outer, _, outside, raw, _ = hostile_run
    assert tree(outer, skip=repo) == outside
    assert tree(repo / "data" / "raw" / "local") == raw
    assert not list(repo.rglob("PWNED")) and not list(repo.rglob("*ESCAPED*"))


def test_experiment_commit_holds_no_raw_audio(hostile_run):
    _, _, _, _, _, run = hostile_run
    refs = run("git", "for-each-ref", "refs/exps", "--format=%(refname) %(objectname)").splitlines()
    assert any("/exec/" not in r for r in refs), refs  # the experiment itself, beside DVC's EXEC_HEAD
    for ref in refs:
        files = run("git", "ls-tree", "-r", "--name-only", ref.split()[1]).splitlines()
        assert "data/raw/local.dvc" in files
        assert not [f for f in files if f.startswith("data/raw/local/") or f.lower().endswith(AUDIO)], ref
