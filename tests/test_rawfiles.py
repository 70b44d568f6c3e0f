"""The raw folder's entries: symlinks followed only inside it; loops, escapes and FIFOs refused, also for DVC."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from lofi_lora.ingest.rawfiles import ignore_refused, main, scan

DVC = str(Path(sys.executable).with_name("dvc"))


def hostile_links(raw: Path, outside: Path) -> None:
    (raw / "sub").mkdir(parents=True)
    (raw / "a.wav").write_bytes(b"RIFF")
    (raw / "sub" / "b [1] #*.wav").write_bytes(b"RIFF")
    outside.write_text("a file outside the raw folder")
    (raw / "loop.wav").symlink_to("loop.wav")
    (raw / "sub" / "loop two ").symlink_to("loop two ")
    (raw / "escape.wav").symlink_to(outside)
    (raw / "gone.wav").symlink_to("missing.wav")
    (raw / "inside.wav").symlink_to("sub/b [1] #*.wav")
    os.mkfifo(raw / "pipe.wav")


def test_scan_follows_links_inside_and_refuses_loops_escapes_broken_links_and_fifos(tmp_path):
    raw = tmp_path / "raw"
    hostile_links(raw, tmp_path / "secret.txt")
    files, refused = scan(raw)
    assert [p.relative_to(raw).as_posix() for p in files] == ["a.wav", "inside.wav", "sub/b [1] #*.wav"]
    assert {r.path.relative_to(raw).as_posix(): r.reason for r in refused} == {
        "escape.wav": "symlink_escape", "gone.wav": "broken_symlink", "loop.wav": "symlink_loop",
        "pipe.wav": "not_a_file", "sub/loop two ": "symlink_loop"}


def _run(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})


def test_dvc_add_of_the_raw_folder_works_once_rawfiles_has_written_dvcignore(tmp_path):
    repo = tmp_path / "repo"
    raw = repo / "data" / "raw" / "local"
    hostile_links(raw, tmp_path / "secret.txt")
    os.unlink(raw / "pipe.wav")  # a FIFO makes `dvc add` hang: refused too (see the scan test), not waited on here
    assert _run(["git", "init", "-q"], repo).returncode == 0 and _run([DVC, "init", "-q"], repo).returncode == 0
    before = _run([DVC, "add", "data/raw/local"], repo)
    assert before.returncode != 0 and "Too many levels of symbolic links" in before.stderr  # what users hit
    assert main([str(raw), "--root", str(repo)]) == 0
    text = (repo / ".dvcignore").read_text()
    ignore_refused(raw, repo)
    assert (repo / ".dvcignore").read_text() == text  # idempotent: no pattern is written twice
    assert "/data/raw/local/loop.wav\n" in text and "/data/raw/local/sub/loop two[ ]\n" in text
    after = _run([DVC, "add", "data/raw/local"], repo)
    assert after.returncode == 0, after.stderr
    listed = _run([DVC, "ls", "-R", "--dvc-only", ".", "data/raw/local"], repo).stdout.split()
    assert "escape.wav" not in listed and "loop.wav" not in listed  # the outside file never reaches DVC's cache
    assert not any("secret" in p.read_text(errors="ignore") for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file())
