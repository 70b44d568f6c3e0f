"""Stage ingest: licence gate, duplicates, every bad file quarantined with its reason, raw files untouched."""
from __future__ import annotations

import hashlib
import os
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lofi_lora.data import audio
from lofi_lora.ingest.stage import find_duplicates, licence_problem, run_ingest
from helpers.config import real_config
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
    (meta / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": {t: ["CORE-01"] for t in tracks}}))
    return expected


def ingest_cfg(root: Path, workers: int = 1):
    """The real config, checked by the schema, reading the corpus under `root`."""
    return real_config(root, data={"raw_dir": str(root / "raw"), "metadata_dir": str(root / "meta")},
                       paths={"interim": str(root / "interim")},
                       ingest={"extensions": ["wav", "flac", "mp3", "ogg", "m4a", "aac"],
                               "allowed_licences": ["generated", "CC0-1.0"], "min_s": 2.0,
                               "duplicate_threshold": 0.2, "workers": workers})


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
    from lofi_lora.ingest.fingerprint import Fingerprint
    from lofi_lora.ingest.stage import Probe

    fp = Fingerprint(np.arange(500, dtype=np.uint32), np.arange(500, dtype=np.int32))
    probes = [Probe(44100, 2, 44100 * 10, "mp3", "a", fp), Probe(44100, 2, 44100 * 10, "flac", "b", fp),
              Probe(44100, 2, 44100 * 10, "wav", "c", fp)]
    pairs = find_duplicates(["x_mp3", "y_flac", "a_wav"], probes, 0.2)
    assert {p["dropped"] for p in pairs} == {"x_mp3", "y_flac"} and {p["kept"] for p in pairs} == {"a_wav"}


def test_m4a_without_ffmpeg_is_an_unsupported_format(tmp_path, monkeypatch):
    from lofi_lora.ingest.stage import probe

    (tmp_path / "x.m4a").write_bytes(b"\x00" * 64)
    monkeypatch.setattr(audio, "ffmpeg_exe", lambda: None)
    p = probe(tmp_path / "x.m4a")
    assert p.reason == "unsupported_format" and "imageio-ffmpeg" in p.error


# ------------------------------------------------------------------ hostile metadata, symlinks, duplicates (issue 15)
def _small_tree(root: Path, tracks: dict[str, str], styles: dict[str, list[str]] | None = None) -> Path:
    """raw/<file> for each {track_id: file} (distinct 9 s tracks), sources.json + style_mapping.json."""
    (root / "meta").mkdir(parents=True, exist_ok=True)
    for k, (tid, rel) in enumerate(tracks.items()):
        (root / "raw" / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (root / "raw" / rel).exists():
            audio.write(root / "raw" / rel, make_track(40 + k, 9.0), SR)
    entry = {"licence": "generated", "provenance": "unit test", "attribution": "tests"}
    (root / "meta" / "sources.json").write_text(json.dumps(
        {"version": 1, "tracks": {tid: {"file": rel, **entry} for tid, rel in tracks.items()}}))
    styles = {tid: ["CORE-01"] for tid in tracks} if styles is None else styles
    (root / "meta" / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": styles}))
    return root


def _outcome(root: Path) -> dict[str, tuple[str, str]]:
    """path relative to root (or the metadata file) -> (reason or 'accepted', detail)."""
    interim = root / "interim"
    out = {Path(a["path"]).relative_to(root).as_posix(): ("accepted", a["track_id"])
           for a in json.loads((interim / "ingest.json").read_text())["accepted"]}
    for q in json.loads((interim / "quarantine.json").read_text())["quarantined"]:
        out[Path(q["path"]).relative_to(root).as_posix()] = (q["reason"], q["detail"])
    return out


def test_escaping_track_id_is_quarantined_at_ingest_with_file_key_and_reason(tmp_path):
    root = _small_tree(tmp_path, {"fine": "fine.wav", "../../../../ESCAPED": "esc.wav",
                                  "we ird $(touch PWNED) 'name'; rm -rf x": "we ird $(touch PWNED) 'name'; rm -rf x.wav"})
    run_ingest(ingest_cfg(root))
    out = _outcome(root)
    assert out["raw/fine.wav"][0] == "accepted"
    for rel in ("raw/esc.wav", "raw/we ird $(touch PWNED) 'name'; rm -rf x.wav"):
        reason, detail = out[rel]
        assert reason == "bad_metadata" and "sources.json: tracks." in detail and "must match" in detail


def test_style_entry_without_licence_is_reported_and_the_others_go_on(tmp_path):
    root = _small_tree(tmp_path, {"a": "a.wav", "b": "b.wav"},
                       styles={"a": ["CORE-01"], "b": ["CORE-01"], "ghost": ["CORE-01"]})
    run_ingest(ingest_cfg(root))
    out = _outcome(root)
    assert out["raw/a.wav"][0] == out["raw/b.wav"][0] == "accepted"
    assert out["meta/style_mapping.json"] == (
        "no_licence", f"{root / 'meta' / 'style_mapping.json'}: tracks.ghost: track has no usable entry in sources.json "
                      "(licence unknown)")


def test_unknown_preset_is_found_at_ingest(tmp_path):
    root = _small_tree(tmp_path, {"a": "a.wav", "b": "b.wav"}, styles={"a": ["CORE-01"], "b": ["CORE-99"]})
    run_ingest(ingest_cfg(root))
    out = _outcome(root)
    assert out["raw/a.wav"][0] == "accepted"
    assert out["raw/b.wav"][0] == "no_style" and "unknown preset `CORE-99`" in json.dumps(
        json.loads((root / "interim" / "quarantine.json").read_text()))


def test_symlink_loops_escapes_and_fifos_are_quarantined_and_inside_links_followed(tmp_path):
    root = _small_tree(tmp_path, {"a": "a.wav", "via_link": "inside_link.wav"})
    raw = root / "raw"
    (raw / "inside_link.wav").unlink()
    (raw / "inside_link.wav").symlink_to("a.wav")  # a link that stays inside: followed
    audio.write(tmp_path / "outside.wav", make_track(60, 9.0), SR)
    (raw / "escape.wav").symlink_to(tmp_path / "outside.wav")
    (raw / "loop.wav").symlink_to("loop.wav")
    (raw / "gone.wav").symlink_to("nothing.wav")
    (raw / "up").symlink_to("..")
    (raw / "sub").mkdir()
    (raw / "sub" / "back").symlink_to("..")
    os.mkfifo(raw / "pipe.wav")
    run_ingest(ingest_cfg(root))
    out = _outcome(root)
    assert out["raw/a.wav"][0] == "accepted"
    assert out["raw/inside_link.wav"] == ("duplicate", "duplicate of a (similarity 1.0)")  # same bytes as a.wav
    assert {k: v[0] for k, v in out.items() if k not in ("raw/a.wav", "raw/inside_link.wav")} == {
        "raw/escape.wav": "symlink_escape", "raw/loop.wav": "symlink_loop", "raw/gone.wav": "broken_symlink",
        "raw/up": "symlink_escape", "raw/sub/back": "symlink_loop", "raw/pipe.wav": "not_a_file"}


def test_unicode_file_name_matches_its_entry_in_either_normal_form(tmp_path):
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café ☕ – théme.wav")
    root = _small_tree(tmp_path, {"cafe": nfd})
    sources = json.loads((root / "meta" / "sources.json").read_text())
    sources["tracks"]["cafe"]["file"] = unicodedata.normalize("NFC", nfd)  # the editor wrote NFC, the disk NFD
    (root / "meta" / "sources.json").write_text(json.dumps(sources, ensure_ascii=False))
    run_ingest(ingest_cfg(root))
    assert list(_outcome(root).values()) == [("accepted", "cafe")]


def test_trimmed_quieter_flac_reencode_loses_to_the_ogg_original(tmp_path):
    root = _small_tree(tmp_path, {"orig": "orig.ogg"})
    original = make_track(70, 14.0) + 0.01 * np.random.default_rng(0).standard_normal((2, int(14.0 * SR)))
    audio.write(root / "raw" / "orig.ogg", original * 0.8, SR)
    decoded, _ = audio.read(root / "raw" / "orig.ogg")
    audio.write(root / "raw" / "copy.flac", decoded[:, SR:] * 10 ** (-4 / 20), SR)  # 1 s trimmed, -4 dB, lossless
    _small_tree(root, {"orig": "orig.ogg", "copy": "copy.flac"})
    run_ingest(ingest_cfg(root))
    [dup] = json.loads((root / "interim" / "ingest.json").read_text())["duplicates"]
    assert (dup["kept"], dup["dropped"]) == ("orig", "copy")
    assert dup["why"].endswith("s longer")


def test_equal_copies_keep_the_lossless_one(tmp_path):
    root = _small_tree(tmp_path, {"orig": "orig.ogg"})
    audio.write(root / "raw" / "orig.ogg", make_track(71, 10.0), SR)
    decoded, _ = audio.read(root / "raw" / "orig.ogg")
    audio.write(root / "raw" / "same.flac", decoded, SR)
    _small_tree(root, {"orig": "orig.ogg", "same": "same.flac"})
    run_ingest(ingest_cfg(root))
    [dup] = json.loads((root / "interim" / "ingest.json").read_text())["duplicates"]
    assert (dup["kept"], dup["why"]) == ("same", "lossless")


def test_duplicate_evidence_dynamics_beat_loudness_and_sample_rate_alone_is_none():
    from lofi_lora.ingest.stage import Probe, _evidence

    orig = Probe(44100, 2, 44100 * 18, "flac", bandwidth_hz=20000.0, lufs=-14.9, plr_db=11.9)
    limited = Probe(44100, 2, 44100 * 18, "wav", bandwidth_hz=20000.0, lufs=-8.9, plr_db=8.7)  # louder remaster
    upsampled = Probe(48000, 2, 48000 * 18, "wav", bandwidth_hz=20050.0, lufs=-14.9, plr_db=11.9)
    mp3 = Probe(44100, 2, 44100 * 18, "mp3", bandwidth_hz=16000.0, lufs=-14.8, plr_db=12.1)
    assert _evidence(orig, limited) == "3.2 dB more peak-to-loudness range" and _evidence(limited, orig) is None
    assert _evidence(orig, upsampled) is None and _evidence(upsampled, orig) is None
    assert _evidence(orig, mp3) == "4000 Hz more bandwidth"
