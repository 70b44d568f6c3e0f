"""Presets: the shipped library, inheritance rules, rejection of cycles/unknown parents/bad fields, CLI."""
import json

import pytest

from lofi_lora.core.errors import DataError
from lofi_lora.data.presets import CATEGORY_TEMPO_BPM, PresetLibrary, load_raw, main, preset_caption, resolve

VALID = {"name": "Test", "category": "core", "base_tags": ["lofi"], "instruments": ["a", "b"],
         "production": ["c", "d"], "mood": ["calm"], "tempo_range": [70, 80], "key_preferences": ["A minor"]}


def write(tmp_path, presets: dict, name: str = "p.json"):
    (tmp_path / name).write_text(json.dumps(presets))
    return tmp_path


def test_library_has_38_presets_in_5_categories():
    lib = PresetLibrary()
    ids = lib.ids()
    assert len(ids) == 38
    counts = {p: sum(i.startswith(p + "-") for i in ids) for p in ("CORE", "JAZZ", "AMB", "CHILL", "DUSK")}
    assert counts == {"CORE": 8, "JAZZ": 8, "AMB": 8, "CHILL": 7, "DUSK": 7}
    for pid in ids:
        p = lib[pid]
        lo, hi = p["tempo_range"]
        cat_lo, cat_hi = CATEGORY_TEMPO_BPM[p["category"]]
        assert cat_lo <= lo < hi <= cat_hi, pid
        assert p["parents"], f"{pid} inherits nothing"


def test_every_preset_renders_a_different_caption():
    lib = PresetLibrary()
    captions = [preset_caption(lib[i]) for i in lib.ids()]
    assert len(set(captions)) == len(captions)
    # and each preset names something of its own beyond its base
    for pid in lib.ids():
        own = set(lib[pid]["instruments"]) | set(lib[pid]["mood"])
        others = set().union(*(set(lib[o]["instruments"]) | set(lib[o]["mood"]) for o in lib.ids() if o != pid))
        assert own - others, f"{pid} has no instrument or mood of its own"


def test_multiple_parents_merge_lists_in_order_and_override_scalars(tmp_path):
    write(tmp_path, {
        "_a": {"base_tags": ["lofi", "x"], "production": ["p1"], "tempo_range": [60, 70], "category": "core"},
        "_b": {"extends": "_a", "base_tags": ["y", "lofi"], "production": ["p2", "p1"], "tempo_range": [72, 88]},
        "_c": {"production": ["p3"], "mood": ["m0"]},
        "CORE-01": {**{k: v for k, v in VALID.items() if k not in ("category", "tempo_range")},
                    "extends": ["_b", "_c"], "base_tags": ["x", "z"], "tempo_range": [74, 86]},
    })
    p = resolve("CORE-01", load_raw(tmp_path))
    assert p["base_tags"] == ["lofi", "x", "y", "z"]          # dedup, first occurrence kept
    assert p["production"] == ["p1", "p2", "p3", "c", "d"]
    assert p["mood"] == ["m0", "calm"]
    assert p["tempo_range"] == [74, 86]                        # scalar/range overridden by the child
    assert p["category"] == "core"                             # inherited scalar
    assert p["parents"] == ["_b", "_a", "_c"]
    assert PresetLibrary(tmp_path).ids() == ["CORE-01"]


def test_cycle_is_rejected_with_the_preset_name(tmp_path):
    write(tmp_path, {"_a": {"extends": "_b"}, "_b": {"extends": "_a"}, "CORE-01": {**VALID, "extends": "_a"}})
    with pytest.raises(DataError, match=r"cycle .*_a -> _b -> _a"):
        PresetLibrary(tmp_path)
    with pytest.raises(DataError, match="CORE-01"):
        resolve("CORE-01", load_raw(tmp_path))


def test_unknown_parent_is_rejected(tmp_path):
    write(tmp_path, {"CORE-01": {**VALID, "extends": ["_missing"]}})
    with pytest.raises(DataError, match="CORE-01.*unknown preset `_missing`"):
        PresetLibrary(tmp_path)


@pytest.mark.parametrize("bad, reason", [
    ({"tempo_range": [70]}, "tempo_range"),
    ({"instruments": "piano"}, "instruments"),
    ({"colour": "blue"}, "colour"),
    ({"key_preferences": ["H minor"]}, "key_preferences"),
])
def test_schema_rejects_bad_fields_naming_the_preset(tmp_path, bad, reason):
    write(tmp_path, {"CORE-01": {**VALID, **bad}})
    with pytest.raises(DataError, match=f"CORE-01.*{reason}|{reason}.*CORE-01"):
        PresetLibrary(tmp_path)


def test_resolved_checks_required_fields_and_category_range(tmp_path):
    write(tmp_path, {"CORE-01": {k: v for k, v in VALID.items() if k != "mood"}})
    with pytest.raises(DataError, match="CORE-01.*mood"):
        PresetLibrary(tmp_path)
    write(tmp_path, {"CORE-01": {**VALID, "tempo_range": [60, 80]}})
    with pytest.raises(DataError, match="CORE-01.*leaves the core range"):
        PresetLibrary(tmp_path)


def test_duplicate_names_across_files_are_rejected(tmp_path):
    write(tmp_path, {"CORE-01": VALID}, "a.json")
    write(tmp_path, {"CORE-01": VALID}, "b.json")
    with pytest.raises(DataError, match="already defined"):
        load_raw(tmp_path)


def test_cli_show_and_list(capsys):
    assert main(["show", "CORE-01"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == "CORE-01" and shown["caption"] and "lofi hip hop" in shown["base_tags"]
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 38 and lines[0].split()[0] == "AMB-01"
    assert main(["show", "CORE-99"]) == 2
    assert "CORE-99" in capsys.readouterr().err
