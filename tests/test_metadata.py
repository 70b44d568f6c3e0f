"""Metadata validation: sources, style mapping and quality scores fail with file, key and reason."""
import json
from pathlib import Path

import pytest

from lofi_lora.core.errors import DataError
from lofi_lora.data.metadata import (load_metadata, load_quality_scores, load_sources, load_style_mapping)
from lofi_lora.data.presets import PresetLibrary

SOURCES = {"version": 1, "tracks": {
    "t1": {"file": "t1.wav", "licence": "CC0-1.0", "provenance": "recorded 2024", "attribution": "me"},
    "t2": {"file": "sub/t2.flac", "licence": "owned", "provenance": "bounce", "attribution": "me"}}}
STYLES = {"version": 1, "tracks": {"t1": ["CORE-01"], "t2": ["JAZZ-03", "CHILL-02"]}}
SCORES = {"version": 1, "scorer_version": "quality-1", "updated_at": "2026-01-01T00:00:00+00:00", "clips": {
    "t1__000": {"current": True, "automated": {"score": 0.9, "lufs": -14.0, "scorer_version": "quality-1",
                                               "scored_at": "2026-01-01T00:00:00+00:00"},
                "human": [{"rater": "ana", "score": 4, "note": "warm", "timestamp": "2026-01-02T10:00:00+00:00"}]},
    "gone__000": {"current": False, "human": [{"rater": "ana", "score": 2, "timestamp": "2026-01-02T10:00:00+00:00"}]}}}


@pytest.fixture(scope="module")
def presets():
    return PresetLibrary()


def dump(tmp_path, name, doc):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def test_valid_metadata_loads(tmp_path, presets):
    dump(tmp_path, "sources.json", SOURCES)
    dump(tmp_path, "style_mapping.json", STYLES)
    meta = load_metadata(tmp_path, presets)
    assert meta.styles_of("t2") == ["JAZZ-03", "CHILL-02"]
    assert meta.sources["t1"]["licence"] == "CC0-1.0"
    with pytest.raises(DataError, match="tracks.t9: no style preset"):
        meta.styles_of("t9")


def test_malformed_json_names_the_file(tmp_path):
    p = dump(tmp_path, "sources.json", '{"version": 1, "tracks": {')
    with pytest.raises(DataError, match=r"sources.json: invalid JSON at line 1"):
        load_sources(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="sources.json: metadata file not found"):
        load_sources(tmp_path / "sources.json")


def test_missing_licence_names_track_and_key(tmp_path):
    doc = json.loads(json.dumps(SOURCES))
    del doc["tracks"]["t2"]["licence"]
    with pytest.raises(DataError, match=r"sources.json: tracks.t2: 'licence' is a required property"):
        load_sources(dump(tmp_path, "sources.json", doc))


def test_unknown_preset_in_style_mapping(tmp_path, presets):
    doc = {"version": 1, "tracks": {"t1": ["CORE-01", "CORE-99"]}}
    with pytest.raises(DataError, match=r"style_mapping.json: tracks.t1\[1\]: unknown preset `CORE-99`"):
        load_style_mapping(dump(tmp_path, "style_mapping.json", doc), presets)


def test_base_preset_and_empty_list_are_rejected(tmp_path, presets):
    with pytest.raises(DataError, match="is a base preset"):
        load_style_mapping(dump(tmp_path, "s.json", {"version": 1, "tracks": {"t1": ["_lofi"]}}), presets)
    with pytest.raises(DataError, match=r"tracks.t1: \[\] should be non-empty"):
        load_style_mapping(dump(tmp_path, "s.json", {"version": 1, "tracks": {"t1": []}}), presets)


def test_style_without_licence_entry_skips_that_track_only(tmp_path, presets):
    dump(tmp_path, "sources.json", SOURCES)
    dump(tmp_path, "style_mapping.json", {"version": 1, "tracks": {**STYLES["tracks"], "t3": ["AMB-01"]}})
    meta = load_metadata(tmp_path, presets)
    assert set(meta.styles) == set(meta.sources) == {"t1", "t2"}
    [p] = meta.problems
    assert (p.reason, p.track_id, p.key) == ("no_licence", "t3", "tracks.t3")
    assert "style_mapping.json: tracks.t3: track has no usable entry in sources.json" in str(p)
    with pytest.raises(DataError, match=r"tracks.t3: track has no usable entry in sources.json"):
        load_style_mapping(tmp_path / "style_mapping.json", presets, SOURCES["tracks"])


def test_licensed_track_without_style_is_reported_not_fatal(tmp_path, presets):
    dump(tmp_path, "sources.json", SOURCES)
    dump(tmp_path, "style_mapping.json", {"version": 1, "tracks": {"t1": ["CORE-01"]}})
    meta = load_metadata(tmp_path, presets)
    assert set(meta.sources) == {"t1"}
    assert [(p.reason, p.track_id, p.raw_file) for p in meta.problems] == [("no_style", "t2", "sub/t2.flac")]


@pytest.mark.parametrize("track_id", ["../../../../ESCAPED", "we ird $(touch PWNED) 'name'; rm -rf x", "a/b",
                                      ".hidden", "ok\n"])
def test_unsafe_track_id_is_left_out_with_file_key_and_reason(tmp_path, presets, track_id):
    entry = {"file": "x.wav", "licence": "owned", "provenance": "p", "attribution": "a"}
    dump(tmp_path, "sources.json", {"version": 1, "tracks": {**SOURCES["tracks"], track_id: entry}})
    dump(tmp_path, "style_mapping.json", {"version": 1, "tracks": {**STYLES["tracks"], track_id: ["CORE-01"]}})
    meta = load_metadata(tmp_path, presets)
    assert set(meta.sources) == set(meta.styles) == {"t1", "t2"}
    [p] = meta.problems  # reported once, for sources.json (its style entry is not reported again)
    assert (Path(p.file).name, p.reason, p.track_id, p.raw_file) == ("sources.json", "bad_metadata", track_id, "x.wav")
    assert "must match" in p.detail
    with pytest.raises(DataError, match="must match"):
        load_sources(tmp_path / "sources.json")


@pytest.mark.parametrize("file, why", [("../outside.wav", "contains `..`"), ("/etc/passwd", "relative"),
                                       ("sub/../../x.wav", "contains `..`"), ("link/x.wav", "outside data.raw_dir")])
def test_source_path_must_stay_inside_the_raw_folder(tmp_path, presets, file, why):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "link").symlink_to(tmp_path)  # a symlink that leaves the raw folder
    entry = {"file": file, "licence": "owned", "provenance": "p", "attribution": "a"}
    dump(tmp_path, "sources.json", {"version": 1, "tracks": {**SOURCES["tracks"], "t3": entry}})
    dump(tmp_path, "style_mapping.json", {"version": 1, "tracks": {**STYLES["tracks"], "t3": ["CORE-01"]}})
    meta = load_metadata(tmp_path, presets, raw_dir=raw)
    assert "t3" not in meta.sources and "t3" not in meta.styles
    p = next(p for p in meta.problems if p.reason == "bad_metadata")
    assert p.key == "tracks.t3.file" and why in p.detail


def test_unknown_preset_skips_that_track_and_names_the_key(tmp_path, presets):
    dump(tmp_path, "sources.json", SOURCES)
    dump(tmp_path, "style_mapping.json", {"version": 1, "tracks": {"t1": ["CORE-01"], "t2": ["JAZZ-03", "NOPE-1"]}})
    meta = load_metadata(tmp_path, presets)
    assert set(meta.sources) == {"t1"}
    assert [(p.key, p.reason) for p in meta.problems] == [("tracks.t2[1]", "bad_metadata"), ("tracks.t2", "no_style")]


def test_invalid_quality_scores_fail_the_metadata_check(tmp_path, presets):
    dump(tmp_path, "sources.json", SOURCES)
    dump(tmp_path, "style_mapping.json", STYLES)
    bad = json.loads(json.dumps(SCORES))
    bad["clips"]["t1__000"]["human"][0]["score"] = 9
    with pytest.raises(DataError, match=r"q.json: clips.t1__000.human\[0\].score"):
        load_metadata(tmp_path, presets, quality_scores=dump(tmp_path, "q.json", bad))


def test_wrong_version(tmp_path, presets):
    with pytest.raises(DataError, match="version: 1 was expected"):
        load_style_mapping(dump(tmp_path, "s.json", {"version": 2, "tracks": {}}), presets)


def test_quality_scores_schema(tmp_path):
    doc = load_quality_scores(dump(tmp_path, "q.json", SCORES))
    assert doc["clips"]["t1__000"]["human"][0]["score"] == 4
    bad = json.loads(json.dumps(SCORES))
    bad["clips"]["t1__000"]["human"][0]["score"] = 9
    with pytest.raises(DataError, match=r"clips.t1__000.human\[0\].score: 9 is greater than the maximum of 5"):
        load_quality_scores(dump(tmp_path, "q.json", bad))
    bad = json.loads(json.dumps(SCORES))
    bad["clips"]["gone__000"]["current"] = True
    with pytest.raises(DataError, match="clips.gone__000: marked current but has no automated scores"):
        load_quality_scores(dump(tmp_path, "q.json", bad))
    bad = json.loads(json.dumps(SCORES))
    del bad["scorer_version"]
    with pytest.raises(DataError, match="'scorer_version' is a required property"):
        load_quality_scores(dump(tmp_path, "q.json", bad))

