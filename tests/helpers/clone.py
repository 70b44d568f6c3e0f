"""A fresh clone of the committed repo, reproduced once per test run (shared by the xdist workers), that the slow
modules copy; and the file-tree fingerprint the slow tests compare before and after.

`dvc repro` of the embedded default is the suite's costliest step (minutes on 2 cores): test_pipeline and test_sweep
used to pay it each. Each module now works in its own copy (`copy_of`), so one module's experiments never reach the
other's workspace, and the first test still sees exactly what a user's fresh `git clone && dvc repro` leaves.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lofi_lora.core.params import REPO_ROOT

DVC = str(Path(sys.executable).with_name("dvc"))
# the venv's python first on PATH: dvc.yaml calls `python`
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(args, cwd, check=True, env=None) -> subprocess.CompletedProcess:
    """`args` in `cwd` (no shell), its output as text; a failure raises with the tail of both streams."""
    proc = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def reproduce(dst: Path) -> Path:
    """`git clone` of the committed repo into `dst`, then `dvc repro` there: what CI and a user get."""
    run(["git", "clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(dst)], cwd=REPO_ROOT)
    run([DVC, "repro"], cwd=dst)
    return dst


def copy_of(src: Path, dst: Path) -> Path:
    """A private copy of a reproduced clone (git, DVC cache and workspace: DVC links by copy here, so nothing is
    shared with `src`)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def tree(folder: Path, skip: Path | None = None) -> dict[str, str]:
    """path -> sha256 of every file under `folder` (outside `skip`), through symlinks that resolve."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and (skip is None or skip not in p.parents)}
