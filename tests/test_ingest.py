"""Stage ingest: licence gate, duplicates, every bad file quarantined with its reason, raw files untouched."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lofi_lora import audio
from lofi_lora.ingest import find_duplicates, licence_problem, run_ingest
from test_audio import make_track

SR = 44100


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def build_corpus(root: Path) -> dict[str, str]:
    """Raw files + sources.json covering every ingest outcome; returns {track_id: expected outcome}."""
    raw, meta = root / "raw", root / "meta"
    (raw / "sub").mkdir(parents=True)
    meta.mkdir()
    tracks, expected = {}, {}

    def add(tid, rel, licence="generated", outcome="accepted", provenance="unit test"):
        tracks[tid] = {"file": rel, "licence": licence, "provenance": provenance, "attribution": "lofi-lora tests"}
        expected[tid] = outcome

    good = make_track(10, 12.0)
    audio.write(raw / "good.wav", good, SR)
    add("good", "good.wav")
    audio.write(raw / "sub" / "other.flac", make_track(11, 10.0), SR)
    add("other", "sub/other.flac")
    audio.write(raw / "third.ogg", make_track(12, 9.0), SR)
    add("third", "third.ogg")
    # duplicate of `good`: mp3, -4 dB, first 0.7 s trimmed; the wav original is kept
    audio.write(raw / "good_copy.mp3", good[:, int(0.7 * SR):] * 10 ** (-4 / 20), SR, bitrate_kbps=128)
    add("good_copy", "good_copy.mp3", outcome="duplicate")
    # byte-identical copy of `other`
    (raw / "other_again.flac").write_bytes((raw / "sub" / "other.flac").read_bytes())
    add("other_again", "other_again.flac", outcome="duplicate")
    audio.write(raw / "unlisted.wav", make_track(13, 9.0), SR)
    expected["unlisted"] = "no_licence"  # no entry at all
    audio.write(raw / "ripped.wav", make_track(14, 9.0), SR)
    add("ripped", "ripped.wav", licence="all-rights-reserved", outcome="no_licence")
    audio.write(raw / "anon.wav", make_track(15, 9.0), SR)
    add("anon", "anon.wav", provenance="", outcome="no_licence")
    cut = raw / "cut.wav"
    audio.write(cut, make_track(16, 9.0), SR)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    add("cut", "cut.wav", outcome="undecodable")
    broken = raw / "broken.flac"
    audio.write(broken, make_track(17, 9.0), SR)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 3])
    add("broken", "broken.flac", outcome="undecodable")
    (raw / "notes.txt").write_text("not audio")
    add("notes", "notes.txt", outcome="unsupported_format")
    audio.write(raw / "blip.wav", make_track(18, 1.0), SR)
    add("blip", "blip.wav", outcome="too_short")
    exe = audio.ffmpeg_exe()
    if exe is not None:
        src = root / "m4a_src.wav"
        audio.write(src, make_track(19, 9.0), SR)
        subprocess.run([exe, "-v", "error", "-i", str(src), "-c:a", "aac", "-b:a", "128k", str(raw / "aac.m4a")], check=True)
        add("aac", "aac.m4a")
    (meta / "sources.json").write_text(json.dumps({"version": 1, "tracks": tracks}))
    return expected


def ingest_cfg(root: Path, workers: int = 1):
    return OmegaConf.create({
        "data": {"raw_dir": str(root / "raw"), "metadata_dir": str(root / "meta")},
        "paths": {"interim": str(root / "interim")},
        "ingest": {"extensions": ["wav", "flac", "mp3", "ogg", "m4a", "aac"],
                   "allowed_licences": ["generated", "CC0-1.0"], "min_seconds": 2.0,
                   "duplicate_threshold": 0.2, "workers": workers},
    })


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    expected = build_corpus(root)
    before = _snapshot(root / "raw")
    summary = run_ingest(ingest_cfg(root))
    return root, expected, before, summary


def test_every_file_gets_its_outcome(ingested):
    root, expected, _, summary = ingested
    result = json.loads((root / "interim" / "ingest.json").read_text())
    quarantine = json.loads((root / "interim" / "quarantine.json").read_text())["quarantined"]
    outcome = {a["track_id"]: "accepted" for a in result["accepted"]}
    outcome |= {q["track_id"]: q["reason"] for q in quarantine}
    assert outcome == expected
    assert summary["files"] == len(expected)
    for q in quarantine:
        assert set(q) >= {"path", "track_id", "reason", "detail"} and q["detail"]


def test_accepted_entries_follow_the_contract(ingested):
    root, _, _, _ = ingested
    result = json.loads((root / "interim" / "ingest.json").read_text())
    for a in result["accepted"]:
        assert set(a) >= {"track_id", "path", "sha256", "duration_s", "sample_rate", "channels", "format",
                          "licence", "attribution"}
        assert Path(a["path"]).is_file() and a["sample_rate"] == SR and a["channels"] == 2
    good = next(a for a in result["accepted"] if a["track_id"] == "good")
    assert good["duration_s"] == pytest.approx(12.0, abs=1e-3) and good["format"] == "wav"


def test_duplicates_keep_the_best_copy_and_record_the_pair(ingested):
    root, _, _, _ = ingested
    dups = {d["dropped"]: d for d in json.loads((root / "interim" / "ingest.json").read_text())["duplicates"]}
    assert dups["good_copy"]["kept"] == "good" and dups["good_copy"]["similarity"] >= 0.2
    assert dups["good_copy"]["offset_s"] == pytest.approx(0.7, abs=0.1)
    assert dups["other_again"]["kept"] == "other" and dups["other_again"]["similarity"] == 1.0


def test_raw_files_are_never_modified(ingested):
    root, _, before, _ = ingested
    assert _snapshot(root / "raw") == before


def test_outcome_is_deterministic_across_workers(ingested, tmp_path):
    root, _, _, _ = ingested
    cfg = ingest_cfg(root, workers=2)
    cfg.paths.interim = str(tmp_path / "interim2")
    run_ingest(cfg)
    for name in ("ingest.json", "quarantine.json"):
        assert (tmp_path / "interim2" / name).read_bytes() == (root / "interim" / name).read_bytes()


def test_licence_rules():
    allowed = {"CC0-1.0"}
    assert licence_problem(None, allowed) == "no entry in sources.json"
    assert "not in ingest.allowed_licences" in licence_problem({"licence": "MIT", "provenance": "x"}, allowed)
    assert licence_problem({"licence": "CC0-1.0", "provenance": "freesound #1"}, allowed) is None


def test_duplicate_group_keeps_lossless_then_name():
    from lofi_lora.fingerprint import Fingerprint
    from lofi_lora.ingest import Probe

    fp = Fingerprint(np.arange(500, dtype=np.uint32), np.arange(500, dtype=np.int32))
    probes = [Probe(44100, 2, 44100 * 10, "mp3", "a", fp), Probe(44100, 2, 44100 * 10, "flac", "b", fp),
              Probe(44100, 2, 44100 * 10, "wav", "c", fp)]
    pairs = find_duplicates(["x_mp3", "y_flac", "a_wav"], probes, 0.2)
    assert {p["dropped"] for p in pairs} == {"x_mp3", "y_flac"} and {p["kept"] for p in pairs} == {"a_wav"}


def test_m4a_without_ffmpeg_is_an_unsupported_format(tmp_path, monkeypatch):
    from lofi_lora.ingest import probe

    (tmp_path / "x.m4a").write_bytes(b"\x00" * 64)
    monkeypatch.setattr(audio, "ffmpeg_exe", lambda: None)
    p = probe(tmp_path / "x.m4a")
    assert p.reason == "unsupported_format" and "imageio-ffmpeg" in p.error
