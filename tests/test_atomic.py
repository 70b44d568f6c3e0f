"""Atomic outputs: a stage killed (SIGKILL) or failing mid-write leaves no half-written output in place."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import soundfile as sf
from omegaconf import OmegaConf

from lofi_lora.data import audio
from lofi_lora.core.params import REPO_ROOT
from test_audio import make_track
from test_ingest import ingest_cfg

SR = 44100


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_audio_write_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "clip.wav"
    real_write = sf.SoundFile.write

    def half_then_fail(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError("disk full (injected)")

    monkeypatch.setattr(sf.SoundFile, "write", half_then_fail)
    with pytest.raises(OSError, match="injected"):
        audio.write(target, make_track(0, 2.0), SR)
    assert list(tmp_path.iterdir()) == []


def test_audio_write_killed_midway_keeps_the_old_file(tmp_path):
    target = tmp_path / "clip.wav"
    audio.write(target, make_track(1, 2.0), SR)
    old = target.read_bytes()
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import pathlib, time, numpy as np, soundfile as sf
        from lofi_lora.data import audio
        real = sf.SoundFile.write
        def half_then_hang(self, data):
            real(self, data[: len(data) // 2]); self.flush()
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(600)
        sf.SoundFile.write = half_then_hang
        audio.write({str(target)!r}, np.zeros((2, 96000), np.float32) + 0.1, 48000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline, "writer never started"
            time.sleep(0.05)
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".clip.wav.")]
        assert partial and partial[0].stat().st_size > 0  # the half-written data exists, under a temp name
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert target.read_bytes() == old


def test_ingest_killed_between_its_two_files_keeps_the_old_output(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "meta").mkdir()
    audio.write(tmp_path / "raw" / "a.wav", make_track(42, 4.0), SR)
    (tmp_path / "meta" / "sources.json").write_text(json.dumps({"version": 1, "tracks": {
        "a": {"file": "a.wav", "licence": "generated", "provenance": "test", "attribution": "x"}}}))
    (tmp_path / "meta" / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": {"a": ["CORE-01"]}}))
    interim = tmp_path / "interim"
    interim.mkdir()
    (interim / "ingest.json").write_text('{"accepted": [], "duplicates": [], "old": true}\n')
    (interim / "quarantine.json").write_text('{"quarantined": [], "old": true}\n')
    before = _tree(interim)
    ready = tmp_path / "ready"
    cfg_json = json.dumps(OmegaConf.to_container(ingest_cfg(tmp_path)))
    code = textwrap.dedent(f"""
        import json, pathlib, time
        from omegaconf import OmegaConf
        import lofi_lora.ingest.stage as ingest
        real, calls = ingest.atomic_write_json, []
        def second_hangs(path, obj):
            calls.append(path)
            if len(calls) == 2:
                pathlib.Path({str(ready)!r}).touch()
                time.sleep(600)
            real(path, obj)
        ingest.atomic_write_json = second_hangs
        ingest.run_ingest(OmegaConf.create(json.loads({cfg_json!r})))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    try:
        deadline = time.time() + 300
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline, "ingest never reached its second write"
            time.sleep(0.05)
        building = [p for p in tmp_path.iterdir() if p.name.startswith(".interim.") and p.is_dir()]
        assert building and (building[0] / "ingest.json").is_file()  # the new output exists only half, aside
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _tree(interim) == before


def test_preprocess_failing_midway_keeps_the_old_output(tmp_path, monkeypatch):
    from lofi_lora.preprocess import stage as pre
    from test_preprocess import PARAMS, write_interim

    raw = tmp_path / "raw"
    raw.mkdir()
    audio.write(raw / "a.wav", make_track(40, 10.0), SR)
    audio.write(raw / "b.wav", make_track(41, 10.0), SR)
    interim = write_interim(tmp_path, {"a": raw / "a.wav", "b": raw / "b.wav"})
    clips, scores, metrics = tmp_path / "clips", tmp_path / "scores.json", tmp_path / "metrics" / "data.json"
    (clips / "wav").mkdir(parents=True)
    (clips / "clips.json").write_text('{"clips": [], "old": true}\n')
    (clips / "wav" / "old__000.wav").write_bytes(b"old clip")
    before = _tree(clips)
    real_write, calls = audio.write, []

    def third_fails(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:  # after track a's wav + mp3, inside track b
            raise OSError("disk full (injected)")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(pre.audio_io, "write", third_fails)
    with pytest.raises(OSError, match="injected"):
        pre.preprocess(interim, clips, scores, metrics, PARAMS)
    assert _tree(clips) == before
    assert not scores.exists() and not metrics.exists()
    assert _leftovers(tmp_path) == []

    monkeypatch.setattr(pre.audio_io, "write", real_write)
    pre.preprocess(interim, clips, scores, metrics, PARAMS)  # the rerun replaces the old output whole
    assert [c["clip_id"] for c in json.loads((clips / "clips.json").read_text())["clips"]] == ["a__000", "b__000"]
    assert not (clips / "wav" / "old__000.wav").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["../x.wav", "a/b.wav", "/etc/x", ".hidden", "x;rm -rf y.wav", "ok.wav\n", ""])
def test_path_inside_refuses_names_that_could_leave_the_folder(tmp_path, name):
    from lofi_lora.core.errors import DataError
    from lofi_lora.core.fsutil import path_inside

    with pytest.raises(DataError, match="refusing to write"):
        path_inside(tmp_path, name)


def test_path_inside_refuses_a_symlink_out_of_the_folder(tmp_path):
    from lofi_lora.core.errors import DataError
    from lofi_lora.core.fsutil import path_inside

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "t__000.wav").symlink_to(tmp_path / "elsewhere.wav")
    assert path_inside(tmp_path / "out", "t__001.wav") == tmp_path / "out" / "t__001.wav"
    with pytest.raises(DataError, match="outside"):
        path_inside(tmp_path / "out", "t__000.wav")
