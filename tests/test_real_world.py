"""Files people actually have: surround, hour-long, hi-res, and sources.json entries whose files are missing.

Every file and entry ends accepted or quarantined with its reason; one file's failure in any step is that file's;
no traceback reaches the user (LOFI_LORA_DEBUG=1 shows it); long files are split in ingest from their header.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lofi_lora.data import audio
from lofi_lora.ingest import stage as ingest_mod
from lofi_lora.preprocess import stage as preprocess_mod
from lofi_lora.preprocess.stage import preprocess
from helpers.config import real_config
from lofi_lora.core.params import REPO_ROOT
from test_audio import make_track
from test_preprocess import PARAMS
from wavex import MASK_5_1, write_wavex

N_ENTRIES, N_PRESENT = 10_000, 6
PART_S = 12.0  # audio.max_track_s here: the 30 s "mix" stands for a 2-hour one


def build(root: Path) -> None:
    raw, meta = root / "raw", root / "meta"
    raw.mkdir(parents=True)
    meta.mkdir()
    surround = np.zeros((6, 12 * 96000), np.float32)
    surround[2] = make_track(1, 12.0, 96000)[0]  # music in the centre only
    write_wavex(raw / "surround.wav", surround, 96000, MASK_5_1)
    sf.write(str(raw / "mix.wav"), make_track(2, 30.0, 48000).T, 48000, subtype="PCM_24")
    sf.write(str(raw / "hires.flac"), make_track(3, 10.0, 96000).T, 96000, subtype="PCM_24")
    sf.write(str(raw / "mono.wav"), make_track(4, 10.0, 44100)[:1].T, 44100, subtype="PCM_16")
    (raw / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(50_000))  # breaks decoding
    sf.write(str(raw / "bomb.wav"), make_track(5, 10.0, 44100).T, 44100)  # breaks a measurement (below)
    sf.write(str(raw / "unlisted.wav"), make_track(6, 10.0, 44100).T, 44100)  # no entry
    present = ["surround.wav", "mix.wav", "hires.flac", "mono.wav", "garbage.wav", "bomb.wav"]
    files = present + [f"gone/{i:05d}.wav" for i in range(N_ENTRIES - N_PRESENT)]
    tracks = {Path(f).stem if "/" not in f else f"gone-{Path(f).stem}": {
        "file": f, "licence": "generated", "provenance": "tests", "attribution": "tests"} for f in files}
    (meta / "sources.json").write_text(json.dumps({"version": 1, "tracks": tracks}))
    (meta / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": {t: ["CORE-01"] for t in tracks}}))


def cfg(root: Path, **audio):
    """The real config, checked by the schema, reading the folder under `root`."""
    return real_config(root, data={"raw_dir": str(root / "raw"), "metadata_dir": str(root / "meta")},
                       paths={"interim": str(root / "interim")},
                       ingest={"extensions": ["wav", "flac"], "allowed_licences": ["generated"], "min_s": 2.0,
                               "duplicate_threshold": 0.2, "workers": 1},
                       audio={"max_track_s": PART_S, "long_tracks": "split", **audio})


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("realworld")
    build(root)
    mp = pytest.MonkeyPatch()
    real_scan = ingest_mod.trackscan.scan

    def scan(path, *a, **k):  # a measurement that raises on one file, as pyloudnorm did on six channels
        if Path(path).name == "bomb.wav":
            raise ValueError("Audio must have five channels or less.")
        return real_scan(path, *a, **k)

    mp.setattr(ingest_mod.trackscan, "scan", scan)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("lofi_lora").addHandler(handler)
    try:
        ingest_mod.run_ingest(cfg(root))
    finally:
        mp.undo()
    (root / "raw" / "mono.wav").rename(root / "mono.moved")  # gone between ingest and preprocess
    metrics = preprocess(root / "interim", root / "clips", root / "scores.json", root / "data.json",
                         {**PARAMS, "max_track_s": PART_S, "long_tracks": "split"})
    logging.getLogger("lofi_lora").removeHandler(handler)
    read = lambda p: json.loads((root / p).read_text())  # noqa: E731
    return root, read("interim/ingest.json"), read("interim/quarantine.json")["quarantined"], \
        read("clips/clips.json")["clips"], read("clips/quarantine.json")["quarantined"], metrics, records


def test_every_entry_and_file_is_accepted_or_quarantined_with_its_reason(ran):
    _, ing, q, _, _, metrics, _ = ran
    reasons = {}
    for e in q:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    assert reasons == {"missing_file": N_ENTRIES - N_PRESENT, "undecodable": 1, "processing_error": 1,
                       "no_licence": 1}
    by_id = {e["track_id"]: e for e in q if e["reason"] != "missing_file"}
    assert by_id["garbage"]["reason"] == "undecodable" and "garbage.wav" in by_id["garbage"]["detail"]
    assert by_id["bomb"]["detail"].startswith(by_id["bomb"]["path"]) and "five channels" in by_id["bomb"]["detail"]
    assert by_id["unlisted"]["reason"] == "no_licence"
    assert sorted({a["track_id"] for a in ing["accepted"]}) == ["hires", "mix", "mono", "surround"]
    assert metrics["tracks_in"] == N_ENTRIES + 1  # every entry and the one file without an entry, each once


def test_a_long_file_is_split_from_its_header_into_bounded_parts(ran):
    _, ing, _, clips, _, _, _ = ran
    parts = [a for a in ing["accepted"] if a["track_id"] == "mix"]
    assert [(p["part"], p["parts"]) for p in parts] == [(0, 3), (1, 3), (2, 3)]
    assert [p["start_s"] for p in parts] == [0.0, 10.0, 20.0] and parts[-1]["end_s"] == 30.0
    assert all(p["duration_s"] <= PART_S for p in parts)
    mix_clips = sorted(c["clip_id"] for c in clips if c["track_id"] == "mix")
    assert mix_clips == ["mix__p000_000", "mix__p001_000", "mix__p002_000"]


def test_surround_and_hires_files_become_clips_at_the_target_level(ran):
    root, _, _, clips, _, _, _ = ran
    for tid in ("surround", "hires"):
        (clip,) = [c for c in clips if c["track_id"] == tid]
        x, sr = audio.read(clip["wav"])
        assert sr == 48000 and x.shape[0] == 2 and clip["lufs"] == pytest.approx(-14.0, abs=0.2)
        assert np.sqrt(np.mean(x ** 2)) > 0.05  # the centre-only 5.1 file was digital silence before


def test_a_file_that_breaks_in_preprocess_is_that_files(ran):
    _, _, _, clips, pre_q, metrics, _ = ran
    (gone,) = pre_q
    assert gone["track_id"] == "mono" and gone["reason"] == "undecodable" and "mono.wav" in gone["detail"]
    assert {c["track_id"] for c in clips} == {"hires", "mix", "surround"}
    assert metrics["quarantined"]["preprocess"] == {"undecodable": 1}


def test_missing_files_make_one_summary_line_not_one_per_entry(ran):
    records = ran[-1]
    missing = [r for r in records if "missing" in r.getMessage()]
    assert len(missing) == 1 and f"{N_ENTRIES - N_PRESENT} (e.g." in missing[0].getMessage()
    assert len(records) < 50


def test_an_error_in_a_worker_prints_no_traceback_unless_debugging(tmp_path, monkeypatch, capfd):
    track = {"track_id": "t", "path": str(tmp_path / "t.wav")}
    sf.write(track["path"], make_track(7, 10.0, 44100).T, 44100)

    def analyse(*a, **k):
        raise RuntimeError("beat tracker blew up")

    monkeypatch.setattr(preprocess_mod, "analyse", analyse)
    (tmp_path / "wav").mkdir(), (tmp_path / "mp3").mkdir()
    out = preprocess_mod.process_track(track, PARAMS, tmp_path)
    (q,) = out["quarantine"]
    assert q["reason"] == "processing_error" and q["path"] == track["path"]
    assert "RuntimeError: beat tracker blew up" in q["detail"]
    assert "Traceback" not in capfd.readouterr().err
    monkeypatch.setenv("LOFI_LORA_DEBUG", "1")
    preprocess_mod.process_track(track, PARAMS, tmp_path)
    assert "Traceback" in capfd.readouterr().err


def test_the_check_command_prints_each_problem_once_and_a_count(ran, capsys):
    from lofi_lora.annotate.check import main as check_main

    root = ran[0]
    assert check_main(["--metadata-dir", str(root / "meta"), "--raw-dir", str(root / "raw"),
                       "--presets", str(REPO_ROOT / "presets")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    missing = N_ENTRIES - N_PRESENT + 1  # mono.wav was moved away after ingest
    assert len(lines) == missing + 1 and len(set(lines)) == len(lines)
    assert lines[-1] == f"{missing} problem(s) in {root / 'meta'}"


def test_long_tracks_refuse_quarantines_the_file_from_its_header(tmp_path):
    (tmp_path / "raw").mkdir(), (tmp_path / "meta").mkdir()
    sf.write(str(tmp_path / "raw" / "mix.wav"), make_track(8, 30.0, 48000).T, 48000)
    entry = {"file": "mix.wav", "licence": "generated", "provenance": "tests", "attribution": "tests"}
    (tmp_path / "meta" / "sources.json").write_text(json.dumps({"version": 1, "tracks": {"mix": entry}}))
    (tmp_path / "meta" / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": {"mix": ["CORE-01"]}}))
    ingest_mod.run_ingest(cfg(tmp_path, long_tracks="refuse"))
    (q,) = json.loads((tmp_path / "interim" / "quarantine.json").read_text())["quarantined"]
    assert q["reason"] == "too_long" and "audio.max_track_s=12" in q["detail"]


def test_parts_are_equal_and_bounded():
    assert ingest_mod.parts(100, 10, 5.0) == [(0, 50), (50, 100)]
    assert ingest_mod.parts(7201 * 44100, 44100, 600.0)[-1][1] == 7201 * 44100
    assert len(ingest_mod.parts(7201 * 44100, 44100, 600.0)) == 13
    assert ingest_mod.parts(10, 10, 5.0) == [(0, 10)]
