"""Stage annotate: estimators on test signals with known tempo/key, scoring, captions, audit, sidecars,
and the stage end to end on a tiny clip set."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from lofi_lora.data import audio as audio_io
from lofi_lora.annotate.analysis import AnalysisOptions, analyze
from lofi_lora.annotate.audit import audit_captions
from lofi_lora.annotate.captions import cap_length, compose_caption
from lofi_lora.annotate.events import Event
from lofi_lora.annotate.features import to_analysis_mono
from lofi_lora.annotate.key import key_from_chroma
from lofi_lora.annotate.scoring import bpm_acc1, bpm_acc2, mirex_key_score
from lofi_lora.annotate.sidecar import check_sidecar, load_sidecar
from lofi_lora.annotate.stage import run_annotate
from lofi_lora.annotate.track import analyse_track
from lofi_lora.core.errors import DataError
from lofi_lora.core.params import REPO_ROOT
from lofi_lora.data.presets import PresetLibrary
from helpers.config import real_config

SR = 22050
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PROG = (0, 3, 4, 0)  # I-IV-V-I / i-iv-V-i (scale degrees): a cadence names the key


def tone(midi: float, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    f = 440 * 2 ** ((midi - 69) / 12)
    return sum(np.sin(2 * np.pi * f * h * t) / h ** 1.5 for h in (1, 2, 3, 4)) * np.exp(-t * 0.8)


def loop(bpm: float, tonic: int, mode: str, bars: int = 8, sr: int = SR, quiet_edges: bool = False) -> np.ndarray:
    """Drums (kick 1+3, snare 2+4, 8th hats accented on the beat), triad chords and a root bass, in 4/4 at exactly `bpm`."""
    beat = 60.0 / bpm
    n = int(bars * 4 * beat * sr)
    y = np.zeros(n)
    rng = np.random.default_rng(0)
    kick = np.sin(2 * np.pi * 55 * np.arange(int(0.15 * sr)) / sr) * np.exp(-np.arange(int(0.15 * sr)) / (0.03 * sr))
    noise = rng.standard_normal(int(0.08 * sr)) * np.exp(-np.arange(int(0.08 * sr)) / (0.01 * sr))
    for b in range(bars * 4):
        i = int(b * beat * sr)
        hit = kick if b % 2 == 0 else 0.6 * noise
        y[i:i + len(hit)] += hit[: n - i]
        for half, level in ((0, 0.15), (0.5, 0.08)):   # offbeat hats softer, as drummers play them
            j = int((b + half) * beat * sr)
            y[j:j + 800] += level * noise[: min(800, n - j)]
    scale = SCALES[mode]
    for bar in range(bars):
        deg = PROG[bar % 4]
        i, m = int(bar * 4 * beat * sr), int(4 * beat * sr)
        m = min(m, n - i)
        root = tonic + scale[deg]
        third = 4 if deg == 4 else (scale[(deg + 2) % 7] - scale[deg]) % 12   # harmonic-minor V is major
        for iv in (0, third, 7):
            pc = (root + iv) % 12
            y[i:i + m] += 0.25 * tone(60 + pc, m, sr)
        y[i:i + m] += 0.5 * tone(36 + root % 12, m, sr)
    if quiet_edges:
        bar_n = int(4 * beat * sr)
        y[: 2 * bar_n] *= 0.08
        y[-2 * bar_n:] *= 0.08
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


@pytest.mark.parametrize("bpm", [72.0, 80.0, 88.0, 99.0])
def test_tempo_within_one_percent_with_no_range(bpm):
    track = analyse_track([analyze(loop(bpm, 9, "minor"), SR)])
    assert abs(track.bpm - bpm) / bpm < 0.01 and track.bpm_source == "audio"


def test_style_range_does_not_move_a_clear_tempo():
    a = analyze(loop(80.0, 0, "major"), SR)
    for rng in ((140, 180), (35, 45), (90, 100)):
        track = analyse_track([a], tempo_range=rng)
        assert abs(track.bpm - 80) < 1 and track.bpm_source == "audio" and track.bpm_audio == track.bpm


def test_style_range_breaks_only_near_ties():
    a = analyze(loop(80.0, 0, "major"), SR)
    half = dataclasses.replace(a, rhythm_bpm=a.rhythm_bpm / 2)      # two equal clips, an octave apart
    assert analyse_track([a, half], tempo_range=(35, 45)).bpm_source == "prior"
    assert abs(analyse_track([a, half], tempo_range=(35, 45)).bpm - 40) < 1
    assert abs(analyse_track([a, half], tempo_range=(70, 90)).bpm - 80) < 1
    tail = dataclasses.replace(a, rhythm_bpm=a.rhythm_bpm * 1.1, duration_s=5.0)   # a short odd clip loses
    track = analyse_track([a, a, tail], tempo_range=(85, 95))
    assert abs(track.bpm - 80) < 1 and track.bpm_source == "audio"
    assert track.clips[2].flags and track.clips[2].flags[0].startswith("tempo") and not track.clips[0].flags
    beatless = dataclasses.replace(a, rhythm_bpm=0.0)                # no followable beat: the range may decide
    doubled = (1.9 * a.tempo.bpm, 2.1 * a.tempo.bpm)
    assert analyse_track([beatless], tempo_range=doubled).bpm_source == "prior"
    assert analyse_track([beatless], tempo_range=doubled).bpm == pytest.approx(2 * a.tempo.bpm)


def test_given_bpm_and_key_win_and_are_marked():
    a = analyze(loop(80.0, 0, "major"), SR)
    track = analyse_track([a], given_bpm=79.5, given_key="Bb minor")
    assert (track.bpm, track.bpm_source, track.key_source) == (79.5, "sources.json", "sources.json")
    assert track.clips[0].keyscale == "A# minor" and abs(track.bpm_audio - 80) < 1


def test_track_key_is_shared_and_a_real_modulation_is_found():
    first, second = loop(84.0, 9, "minor", bars=8), loop(84.0, 2, "minor", bars=8)
    clips = [analyze(y, SR) for y in (first, second[: len(second) // 3], second[len(second) // 3:])]
    track = analyse_track(clips)
    assert track.key_change is not None and track.key_change["from"] == "A minor"
    assert track.key_change["to"] == "D minor" and abs(track.key_change["at_s"] - len(first) / SR) < 4
    assert [v.keyscale for v in track.clips] == ["A minor", "D minor", "D minor"]
    steady = analyse_track([analyze(y, SR) for y in (first, first[: len(first) // 2], first)])
    assert steady.key_change is None and {v.keyscale for v in steady.clips} == {"A minor"}


@pytest.mark.parametrize("tonic, mode", [(9, "minor"), (0, "major"), (7, "major"), (2, "minor"), (6, "minor")])
def test_key_of_a_progression(tonic, mode):
    a = analyze(loop(84.0, tonic, mode), SR)
    names = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
    assert a.key.keyscale == f"{names[tonic]} {mode}"
    assert 0 <= a.key.confidence <= 1


def test_key_profiles_and_silence():
    chroma = np.zeros((12, 10))
    for pc, w in ((0, 1.0), (4, 0.8), (7, 0.9), (2, 0.3), (5, 0.4), (9, 0.4), (11, 0.3)):
        chroma[pc] = w
    for profile in ("krumhansl", "temperley", "combined"):
        assert key_from_chroma(chroma, profile=profile).keyscale == "C major"
    assert key_from_chroma(np.zeros((12, 5))).confidence == 0.0
    with pytest.raises(ValueError, match="unknown key profile"):
        key_from_chroma(chroma, profile="nope")


def test_events_find_quiet_intro_and_outro():
    y = loop(80.0, 0, "major", bars=10, quiet_edges=True)
    a = analyze(y, SR, AnalysisOptions(min_event_s=4.0))
    types = [e.type for e in a.events]
    assert types[0] == "intro" and types[-1] == "outro" and "loop" in types
    assert a.events[0].start == 0 and abs(a.events[-1].end - len(y) / SR) < 1e-6
    for prev, nxt in zip(a.events, a.events[1:]):
        assert prev.end == pytest.approx(nxt.start)
    loud = max(a.events, key=lambda e: e.intensity)
    assert loud.type == "loop" and a.events[0].intensity < loud.intensity - 0.3


def test_stereo_any_rate_input():
    y = loop(90.0, 4, "minor", bars=6)
    st = np.stack([y, y])
    y48 = audio_io.resample(st, SR, 48000)
    a = analyze(y48, 48000)
    assert abs(a.rhythm_bpm - 90) < 1 and a.key.keyscale == "E minor"
    assert to_analysis_mono(y48, 48000).shape[0] == pytest.approx(len(y), abs=2)


def test_scoring():
    assert bpm_acc1(81.0, 80.0) and not bpm_acc1(84.0, 80.0)
    assert bpm_acc2(160.5, 80.0) and bpm_acc2(40.2, 80.0) and bpm_acc2(240, 80) and not bpm_acc2(120, 80)
    assert mirex_key_score("A minor", "A minor") == 1.0
    assert mirex_key_score("E minor", "A minor") == 0.5      # a fifth above
    assert mirex_key_score("D minor", "A minor") == 0.0      # a fifth below: no credit (mir_eval)
    assert mirex_key_score("C major", "A minor") == 0.3
    assert mirex_key_score("A minor", "C major") == 0.3
    assert mirex_key_score("A major", "A minor") == 0.2
    assert mirex_key_score("Bb major", "A# major") == 1.0    # enharmonic spellings


def test_captions_prefix_length_and_variety():
    lib = PresetLibrary()
    p = [lib["CORE-01"]]
    ev = [Event(0, 4, "intro", 0.3, "A"), Event(4, 20, "loop", 0.95, "B")]
    a = compose_caption("t__000", p, 82, "A minor", "4", "Lofi Artist", ev, event_captions=False)
    b = compose_caption("t__001", p, 82, "A minor", "4", "Lofi Artist", ev, event_captions=True)
    assert a.startswith("Lofi Artist: ") and "82 BPM" in a and "A minor" in a and "4/4" in a
    assert "structure: " not in a.lower() and "sparse intro 0-4 s" in b
    assert a != compose_caption("t__002", p, 82, "A minor", "4", "Lofi Artist")
    assert a == compose_caption("t__000", p, 82, "A minor", "4", "Lofi Artist", ev)   # deterministic
    assert len(compose_caption("x", p, 82, "A minor", "4", "A", ev, True, max_chars=60)) <= 60
    assert cap_length("one, two, three", 9) == "one, two"


def test_audit_finds_duplicates_and_template_reuse():
    caps = {"a": "x: slow warm piano loop with tape hiss", "b": "x: slow warm piano loop with tape hiss",
            "c": "x: bright funky guitar over crisp hats", "d": "x: slow warm piano loop under rain"}
    r = audit_captions(caps, n=3, artist="x")
    assert r["exact_duplicate_groups"] == [["a", "b"]] and r["clips_in_duplicates"] == 2
    assert r["unique_captions"] == 3
    assert 0.4 < r["shared_ngram_ratio"] < 1.0
    assert r["top_shared_ngrams"][0]["ngram"] in ("slow warm piano", "warm piano loop") 
    distinct = audit_captions({"a": "x: one two three four", "b": "x: five six seven eight"}, n=2, artist="x")
    assert distinct["shared_ngram_ratio"] == 0.0 and distinct["exact_duplicate_groups"] == []


def test_sidecar_validation():
    doc = {"caption": "c", "lyrics": "[Instrumental]", "bpm": 80, "keyscale": "A minor", "timesignature": "4",
           "vocal_language": "en", "duration": 10.0, "artist": "a", "style_ids": ["CORE-01"], "track_id": "t",
           "clip_id": "t__000", "source": {"rich_details": {}},
           "events": [{"start": 0, "end": 4, "type": "intro", "intensity": 0.2},
                      {"start": 4, "end": 10, "type": "loop", "intensity": 1.0}]}
    check_sidecar(doc, "t__000.json")
    with pytest.raises(DataError, match="t__000.json: keyscale"):
        check_sidecar({**doc, "keyscale": "A dorian"}, "t__000.json")
    with pytest.raises(DataError, match=r"events\[1\]"):
        check_sidecar({**doc, "events": [doc["events"][1], doc["events"][0]]}, "t__000.json")


# ------------------------------------------------------------------------------------------ the stage
def make_corpus(root: Path, specs) -> dict:
    clips, sources, styles, truth = [], {}, {}, {}
    (root / "clips" / "wav").mkdir(parents=True)
    for i, (tid, style, bpm, tonic, mode) in enumerate(specs):
        y = loop(bpm, tonic, mode, bars=6)
        st = audio_io.resample(np.stack([y, y]), SR, 48000)
        cid = f"{tid}__000"
        wav = root / "clips" / "wav" / f"{cid}.wav"
        audio_io.write(wav, st, 48000)
        clips.append({"clip_id": cid, "track_id": tid, "wav": str(wav), "start_s": 0.0,
                      "end_s": st.shape[1] / 48000, "duration_s": st.shape[1] / 48000})
        sources[tid] = {"file": f"{tid}.wav", "licence": "generated", "provenance": "test", "attribution": "t"}
        styles[tid] = [style]
        names = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
        truth[tid] = {"bpm": bpm, "keyscale": f"{names[tonic]} {mode}"}
    (root / "clips" / "clips.json").write_text(json.dumps({"clips": clips}))
    meta = root / "metadata"
    meta.mkdir()
    (meta / "sources.json").write_text(json.dumps({"version": 1, "tracks": sources}))
    (meta / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": styles}))
    (meta / "truth.json").write_text(json.dumps({"version": 1, "tracks": truth}))
    return real_config(root, paths={k: str(root / k) for k in ("clips", "annotations", "annotator_cache", "metrics")},
                       data={"metadata_dir": str(meta)}, annotate={"workers": 1})


def test_stage_writes_both_sidecar_formats_and_metrics(tmp_path):
    cfg = make_corpus(tmp_path, [("t1", "CORE-01", 82.0, 9, "minor"), ("t2", "CHILL-04", 92.0, 2, "major"),
                                 ("t3", "AMB-02", 74.0, 7, "major")])
    sources_path = Path(cfg.data.metadata_dir) / "sources.json"
    sources = json.loads(sources_path.read_text())
    sources["tracks"]["t2"].update(bpm=92, keyscale="D major")          # the user knows this one
    sources_path.write_text(json.dumps(sources))
    cfg.annotate.event_captions = True
    result = run_annotate(cfg)
    assert result["clips"] == 3 and result["bpm_coverage"] == 1.0
    out = tmp_path / "annotations"
    for tid in ("t1", "t2", "t3"):
        doc = load_sidecar(out / f"{tid}__000.json")
        assert doc["caption"].startswith("lofi-lora: ") and "structure: " in doc["caption"].lower()
        assert doc["lyrics"] == "[Instrumental]" and doc["timesignature"] == "4" and doc["vocal_language"] == "en"
        assert (out / f"{tid}__000_prompt.txt").read_text().count(",") > 5
        assert (out / f"{tid}__000_lyrics.txt").read_text().strip() == "[Instrumental]"
        assert doc["source"]["rich_details"]["bpm_confidence"] >= 0
    assert [load_sidecar(out / "t1__000.json")[k] for k in ("bpm", "keyscale")] == [82, "A minor"]
    details = [load_sidecar(out / f"{t}__000.json")["source"]["rich_details"] for t in ("t1", "t2")]
    assert details[0]["bpm_source"] == "audio" and details[0]["key_source"] == "audio"
    assert details[1]["bpm_source"] == "sources.json" and details[1]["key_source"] == "sources.json"
    metrics = json.loads((tmp_path / "metrics" / "annotate.json").read_text())["annotate"]
    assert metrics["one_key_per_track"] == 1.0
    bpm_sources = json.loads((tmp_path / "metrics" / "annotate" / "bpm_sources.json").read_text())
    assert {r["source"]: r["tracks"] for r in bpm_sources} == {"audio": 2, "sources.json": 1}
    assert metrics["truth"]["bpm_acc1"] == 1.0 and metrics["truth"]["key_mirex"] == 1.0
    assert metrics["caption_unique_ratio"] == 1.0
    assert json.loads((tmp_path / "metrics" / "annotate" / "event_types.json").read_text())  # diagnostics table


def test_stage_rejects_unknown_track_and_missing_audio(tmp_path):
    cfg = make_corpus(tmp_path, [("t1", "CORE-01", 82.0, 9, "minor")])
    doc = json.loads((tmp_path / "clips" / "clips.json").read_text())
    doc["clips"].append({**doc["clips"][0], "clip_id": "t9__000", "track_id": "t9"})
    (tmp_path / "clips" / "clips.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="tracks.t9: no style preset"):
        run_annotate(cfg)
    doc["clips"] = [{**doc["clips"][0], "wav": "nowhere.wav", "clip_id": "t1__001"}]
    (tmp_path / "clips" / "clips.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="clip t1__001: audio file nowhere.wav not found"):
        run_annotate(cfg)


def test_metadata_check_cli_names_each_problem(tmp_path, capsys):
    from lofi_lora.annotate.check import main as check_main

    raw, meta = tmp_path / "raw", tmp_path / "meta"
    raw.mkdir()
    meta.mkdir()
    (raw / "a.wav").write_bytes(b"")
    (raw / "c.wav").write_bytes(b"")
    entry = {"file": "a.wav", "licence": "CC-BY-4.0", "provenance": "mine", "attribution": "me", "bpm": 72,
             "keyscale": "F# minor"}
    (meta / "sources.json").write_text(json.dumps({"version": 1, "tracks": {"a": entry}}))
    (meta / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": {"a": ["CORE-01"]}}))
    args = ["--metadata-dir", str(meta), "--raw-dir", str(raw), "--presets", str(REPO_ROOT / "presets")]
    assert check_main(args) == 0 and "1 track(s)" in capsys.readouterr().out
    (meta / "sources.json").write_text(json.dumps({"version": 1, "tracks": {
        "a": entry, "b": {**entry, "file": "b.wav"}, "c": {**entry, "file": "c.wav"}}}))
    (meta / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": {"a": ["CORE-01"], "b": ["CORE-01"]}}))
    assert check_main(args) == 1
    err = capsys.readouterr().err
    assert "tracks.b.file: b.wav not found" in err and "tracks.c: track has no entry in style_mapping.json" in err
    (meta / "sources.json").write_text(json.dumps({"version": 1, "tracks": {"a": {**entry, "keyscale": "H dorian"}}}))
    assert check_main(args) == 1 and "tracks.a: keyscale: 'H dorian'" in capsys.readouterr().err
