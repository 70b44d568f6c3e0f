"""Stage preprocess: quality quarantine, loudness, cuts outside onsets near bar lines, outputs and metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lofi_lora.data import audio

from lofi_lora.data import quality
from lofi_lora.core.params import REPO_ROOT
from lofi_lora.preprocess.stage import analyse, choose_cuts, merge_scores, preprocess, process_track
from helpers.config import real_config
from test_audio import make_track

SR = 44100
PARAMS = {"sample_rate": 48000, "channels": 2, "target_lufs": -14.0, "true_peak_dbfs": -1.0, "max_clip_s": 20.0,
          "min_clip_s": 8.0, "beat_start_bpm": 85.0, "beats_per_bar": 4, "max_track_s": 3600.0, "min_source_sample_rate": 44100,
          "max_clipping_ratio": 0.001, "max_silence_ratio": 0.5, "silence_db": -60.0, "max_dc_offset": 0.05,
          "min_lufs": -45.0, "mp3_bitrate_kbps": 128, "workers": 1,
          "quality_scores": "unused-in-tests"}


def known_onsets(duration_s: float, bpm: float = 100.0, sr: int = 48000, seed: int = 0):
    """Plucked notes on every eighth (off-beats a little early/late), accented downbeats; returns (audio, onsets)."""
    rng = np.random.default_rng(seed)
    beat = 60.0 / bpm
    n = int(duration_s * sr)
    y = np.zeros(n)
    onsets = []
    for k in range(int(duration_s / beat * 2)):
        t0 = k * beat / 2 + (rng.uniform(-0.02, 0.02) if k % 2 else 0.0)
        onsets.append(t0)
        s0 = int(t0 * sr)
        m = min(n - s0, int(0.6 * sr))
        tt = np.arange(m) / sr
        amp = 1.0 if k % 8 == 0 else (0.6 if k % 2 == 0 else 0.35)
        f = rng.choice([220.0, 262.0, 294.0, 330.0, 392.0, 440.0])
        y[s0:s0 + m] += amp * np.minimum(1.0, tt / 0.004) * np.exp(-tt / 0.08) * np.sin(2 * np.pi * f * tt)
    return (0.3 * np.stack([y, y])).astype(np.float32), np.array(onsets), beat


def test_cuts_never_inside_an_onset_and_sit_at_bar_lines():
    sr, duration_s = 48000, 70.0
    x, onsets, beat = known_onsets(duration_s, sr=sr)
    cuts = choose_cuts(analyse(x, sr), duration_s, max_clip_s=16.0, min_clip_s=6.0)
    assert len(cuts) >= 6  # several cuts, each a chance to land in one of the 280 attacks
    assert cuts[0] == 0.0 and cuts[-1] == duration_s
    lengths = np.diff(cuts)
    assert lengths.max() <= 16.0 + 1e-9 and lengths.min() >= 6.0
    for c in cuts[1:-1]:
        since = c - onsets
        # not in an attack: never from 5 ms before an onset (the edge fade) to 60 ms after it
        assert not np.any((since > -0.005) & (since < 0.06)), f"cut at {c:.3f} s is inside an onset"
        bars = c / (4 * beat)
        assert abs(bars - round(bars)) * 4 <= 0.5, f"cut at {c:.3f} s is {bars:.2f} bars, not near a bar line"


def test_short_tracks_are_not_cut():
    x, _, _ = known_onsets(15.0)
    assert choose_cuts(analyse(x, 48000), 15.0, 20.0, 8.0) == [0.0, 15.0]


def write_interim(root: Path, files: dict[str, Path]) -> Path:
    interim = root / "interim"
    interim.mkdir(parents=True, exist_ok=True)
    accepted = []
    for tid, p in files.items():
        i = audio.info(p)
        accepted.append({"track_id": tid, "path": p.as_posix(), "sha256": "-", "duration_s": i.duration_s,
                         "sample_rate": i.sample_rate, "channels": i.channels, "format": i.format,
                         "licence": "generated", "attribution": "tests"})
    (interim / "ingest.json").write_text(json.dumps({"accepted": accepted, "duplicates": [{"kept": "a", "dropped": "b",
                                                                                        "similarity": 0.5}]}))
    (interim / "quarantine.json").write_text(json.dumps({"quarantined": [
        {"path": "x.wav", "track_id": "x", "reason": "no_licence", "detail": "no entry"},
        {"path": "b.mp3", "track_id": "b", "reason": "duplicate", "detail": "duplicate of a"}]}))
    return interim


def bad_and_good_corpus(root: Path) -> tuple[Path, dict[str, str]]:
    """Raw files for each preprocess outcome; returns (interim dir, {track_id: expected reason or 'ok'})."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    files, expected = {}, {}

    def put(tid, x, sr, outcome, ext="wav", subtype=None):
        p = raw / f"{tid}.{ext}"
        audio.write(p, x, sr, subtype=subtype)
        files[tid], expected[tid] = p, outcome

    put("good", make_track(20, 12.0), SR, "ok", ext="flac")
    put("long", make_track(21, 32.0), SR, "ok")
    put("clipped", np.clip(make_track(22, 10.0) * 6.0, -1.0, 1.0), SR, "clipping")
    put("silent", make_track(23, 10.0) * 10 ** (-80 / 20), SR, "silence")
    put("mono22k", make_track(24, 10.0, sr=22050, channels=1), 22050, "low_sample_rate")
    put("offset", make_track(25, 10.0) * 0.5 + 0.2, SR, "dc_offset")
    nan = make_track(26, 10.0)
    nan[:, 5000:5100] = np.nan
    put("nan", nan, SR, "non_finite", subtype="FLOAT")
    put("short", make_track(27, 5.0), SR, "too_short")
    return write_interim(root, files), expected


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    interim, expected = bad_and_good_corpus(root)
    scores = root / "metadata" / "quality_scores.json"
    scores.parent.mkdir()
    scores.write_text(json.dumps({"version": 1, "clips": {
        "good__000": {"human": {"rating": 4, "by": "ear"}}, "gone__000": {"human": {"rating": 2}}}}))
    metrics = preprocess(interim, root / "clips", scores, root / "metrics" / "data.json", PARAMS)
    return root, expected, metrics


def test_every_bad_track_gets_its_reason(processed):
    root, expected, _ = processed
    q = json.loads((root / "clips" / "quarantine.json").read_text())["quarantined"]
    got = {e["track_id"]: e["reason"] for e in q}
    assert got == {k: v for k, v in expected.items() if v != "ok"}
    assert all(e["detail"] and e["reasons"][0] == e["reason"] for e in q)


def test_clips_follow_the_contract(processed):
    root, _, _ = processed
    clips = json.loads((root / "clips" / "clips.json").read_text())["clips"]
    assert {c["track_id"] for c in clips} == {"good", "long"}
    assert [c["clip_id"] for c in clips if c["track_id"] == "long"] == ["long__000", "long__001"]
    for c in clips:
        assert PARAMS["min_clip_s"] <= c["duration_s"] <= PARAMS["max_clip_s"]
        wav = Path(c["wav"])
        assert wav.parent == root / "clips" / "wav" and Path(c["mp3"]).is_file()
        i = sf.info(str(wav))
        assert (i.samplerate, i.channels, i.subtype) == (48000, 2, "PCM_24")
        x, sr = audio.read(wav)
        assert abs(quality.integrated_lufs(x, sr) - PARAMS["target_lufs"]) <= 0.5
        assert quality.true_peak_dbfs(x) <= PARAMS["true_peak_dbfs"] + 0.1  # 24-bit rounding
        assert abs(c["lufs"] - PARAMS["target_lufs"]) <= 0.5
    long = [c for c in clips if c["track_id"] == "long"]
    assert long[0]["start_s"] == 0.0 and long[-1]["end_s"] == pytest.approx(32.0, abs=1e-3)
    assert all(a["end_s"] == b["start_s"] for a, b in zip(long, long[1:]))


def test_metrics_count_tracks_reasons_and_hours(processed):
    root, expected, metrics = processed
    m = json.loads((root / "metrics" / "data.json").read_text())["data"]
    assert m["tracks_in"] == len(expected) + 2
    reasons = json.loads((root / "metrics" / "data" / "quarantine.json").read_text())  # diagnostics, not metrics
    assert {r["reason"]: r["tracks"] for r in reasons if r["stage"] == "ingest"} == {"duplicate": 1, "no_licence": 1}
    assert sum(r["tracks"] for r in reasons if r["stage"] == "preprocess") == 6 and m["duplicates"] == 1
    assert m["quarantined"] == 8 and "seconds" not in m
    assert m["clips"] == 3 and m["hours"] == pytest.approx(44.0 / 3600, abs=1e-4)


def test_quality_scores_keep_human_scores(processed):
    root, _, _ = processed
    doc = json.loads((root / "metadata" / "quality_scores.json").read_text())
    assert doc["clips"]["good__000"]["human"] == {"rating": 4, "by": "ear"}
    assert doc["clips"]["good__000"]["automated"]["scorer_version"] == quality.SCORER_VERSION
    # no wall clock: a rerun on the same clips writes the same bytes (the file is versioned)
    assert "scored_at" not in doc["clips"]["good__000"]["automated"] and "updated_at" not in doc
    assert doc["clips"]["gone__000"] == {"current": False, "human": {"rating": 2}}
    merged = merge_scores(doc, {})
    assert merged["clips"]["good__000"]["human"]["rating"] == 4 and "automated" not in merged["clips"]["good__000"]


@pytest.mark.slow  # two fresh interpreters importing librosa/numba: ~15 s idle, ~45 s on a loaded 2-core box
def test_stage_scripts_run_alone_with_an_override(tmp_path):
    """`python stages/ingest.py` then `python stages/preprocess.py audio.max_clip_s=20`, as DVC would."""
    raw, meta = tmp_path / "raw", tmp_path / "meta"
    raw.mkdir()
    meta.mkdir()
    audio.write(raw / "t1.wav", make_track(30, 26.0), SR)
    audio.write(raw / "t2.flac", make_track(31, 9.0), SR)
    tracks = {t: {"file": f, "licence": "generated", "provenance": "test", "attribution": "x"}
              for t, f in (("t1", "t1.wav"), ("t2", "t2.flac"))}
    (meta / "sources.json").write_text(json.dumps({"version": 1, "tracks": tracks}))
    (meta / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": {t: ["CORE-01"] for t in tracks}}))
    paths = [f"paths.interim={tmp_path / 'interim'}", f"paths.clips={tmp_path / 'clips'}",
             f"paths.metrics={tmp_path / 'metrics'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    run = [sys.executable, "stages/ingest.py", f"data.raw_dir={raw}", f"data.metadata_dir={meta}", "ingest.workers=1",
           *paths]
    subprocess.run(run, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    run = [sys.executable, "stages/preprocess.py", "audio.max_clip_s=20", "audio.workers=1",
           f"audio.quality_scores={tmp_path / 'scores.json'}", *paths]
    subprocess.run(run, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    clips = json.loads((tmp_path / "clips" / "clips.json").read_text())["clips"]
    assert [c["clip_id"] for c in clips] == ["t1__000", "t1__001", "t2__000"]
    assert max(c["duration_s"] for c in clips) <= 20.0
    assert json.loads((tmp_path / "metrics" / "data.json").read_text())["data"]["clips"] == 3


EXPECTED_BY_KIND = {"good": "ok", "long": "ok", "clipped": "clipping", "silent": "silence",
                    "mono_22k": "low_sample_rate", "truncated": "undecodable", "unlicensed": "no_licence",
                    "duplicate": "duplicate"}


@pytest.mark.slow  # renders a small synth corpus, then runs ingest + preprocess on it (~1-2 min on 2 cores)
def test_synth_corpus_every_bad_kind_gets_its_reason(tmp_path):
    from lofi_lora.ingest.stage import run_ingest
    from lofi_lora.preprocess.stage import run_preprocess

    synth = pytest.importorskip("lofi_lora.synth")
    paths = {key: str(tmp_path / key) for key in ("synth", "synth_metadata", "interim", "clips", "metrics")}
    cfg = real_config(tmp_path, synth={"n_tracks": 3, "n_long": 1, "track_s": [10, 12], "long_s": 40},
                      paths=paths, data={"raw_dir": paths["synth"], "metadata_dir": paths["synth_metadata"]},
                      audio={"quality_scores": str(tmp_path / "quality_scores.json"), "workers": 1},
                      ingest={"workers": 1})
    synth.generate_corpus(cfg)
    run_ingest(cfg)
    run_preprocess(cfg)
    truth = json.loads((tmp_path / "synth_metadata" / "truth.json").read_text())["tracks"]
    reasons = {q["track_id"]: q["reason"] for f in ("interim", "clips")
               for q in json.loads((tmp_path / f / "quarantine.json").read_text())["quarantined"]}
    with_clips = {c["track_id"] for c in json.loads((tmp_path / "clips" / "clips.json").read_text())["clips"]}
    got = {tid: reasons.get(tid, "ok" if tid in with_clips else "missing") for tid in truth}
    assert got == {tid: EXPECTED_BY_KIND[t["kind"]] for tid, t in truth.items()}


def test_unsafe_track_id_in_interim_writes_nothing_outside_the_clips_folder(tmp_path):
    """Whatever reaches preprocess from upstream, a clip file is only ever written inside its folder."""
    audio.write(tmp_path / "raw" / "t.wav", make_track(33, 9.0), SR)
    out = tmp_path / "a" / "b" / "clips"
    (out / "wav").mkdir(parents=True)
    (out / "mp3").mkdir()
    for tid in ("../../../../ESCAPED", "we ird $(touch PWNED) 'name'; rm -rf x"):
        r = process_track({"track_id": tid, "path": str(tmp_path / "raw" / "t.wav")}, PARAMS, out)
        assert r["clips"] == [] and r["quarantine"][0]["reason"] == "bad_metadata"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["t.wav"]
