"""Lofi style presets: JSON files in presets/ with `extends` inheritance from `_`-prefixed bases.

Every `presets/*.json` maps preset names to bodies. A body may name parents in `extends` (one or many);
resolution merges parents left to right, then the body itself: lists are concatenated with duplicates
dropped (first occurrence kept), scalars and ranges are overridden by the later source. Names starting
with `_` are bases (mixins) and are never assigned to tracks. Both the raw bodies and the resolved
presets are checked against JSON schemas, so a typo fails with the preset's name and the reason.

    python -m lofi_lora.data.presets list
    python -m lofi_lora.data.presets show CORE-01
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterable

import jsonschema

from lofi_lora.core.errors import DataError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DIR = REPO_ROOT / "presets"

LIST_FIELDS = ("base_tags", "instruments", "production", "mood", "key_preferences")
KEYSCALE_PATTERN = r"^[A-G](#|b)? (major|minor)$"

# Tempo bounds per category, from the project brief; a preset may narrow them, never widen them.
CATEGORY_TEMPO_BPM: dict[str, tuple[int, int]] = {
    "core": (70, 90),
    "jazz": (75, 95),
    "ambient": (60, 75),
    "chill": (85, 95),
    "dusk": (60, 80),
}
CATEGORY_PREFIX = {"core": "CORE", "jazz": "JAZZ", "ambient": "AMB", "chill": "CHILL", "dusk": "DUSK"}

_string_list = {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}

RAW_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "lofi-lora preset (as written, before inheritance)",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "extends": {"oneOf": [{"type": "string", "minLength": 1}, _string_list]},
        "name": {"type": "string", "minLength": 3},
        "category": {"enum": sorted(CATEGORY_TEMPO_BPM)},
        "description": {"type": "string"},
        "base_tags": _string_list,
        "instruments": _string_list,
        "production": _string_list,
        "mood": _string_list,
        "tempo_range": {"type": "array", "items": {"type": "number", "minimum": 30, "maximum": 240},
                        "minItems": 2, "maxItems": 2},
        "key_preferences": {"type": "array", "items": {"type": "string", "pattern": KEYSCALE_PATTERN},
                            "uniqueItems": True},
    },
}

RESOLVED_SCHEMA: dict[str, Any] = {
    **RAW_SCHEMA,
    "title": "lofi-lora preset (resolved)",
    "required": ["name", "category", "base_tags", "instruments", "production", "mood", "tempo_range",
                 "key_preferences"],
    "properties": {
        **{k: v for k, v in RAW_SCHEMA["properties"].items() if k != "extends"},
        "id": {"type": "string", "pattern": r"^(CORE|JAZZ|AMB|CHILL|DUSK)-\d{2}$"},
        "parents": {"type": "array", "items": {"type": "string"}},
        "base_tags": {**_string_list, "minItems": 1},
        "instruments": {**_string_list, "minItems": 2},
        "production": {**_string_list, "minItems": 2},
        "mood": {**_string_list, "minItems": 1},
        "key_preferences": {**RAW_SCHEMA["properties"]["key_preferences"], "minItems": 1},
    },
}


def load_raw(preset_dir: str | Path = DEFAULT_DIR) -> dict[str, dict[str, Any]]:
    """Read every `*.json` in `preset_dir` into one name -> raw body dict (schema-checked, no duplicates)."""
    preset_dir = Path(preset_dir)
    files = sorted(preset_dir.glob("*.json"))
    if not files:
        raise DataError(f"{preset_dir}: no preset files (*.json)")
    raw: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    validator = jsonschema.Draft202012Validator(RAW_SCHEMA)
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{f}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
        if not isinstance(doc, dict):
            raise DataError(f"{f}: expected an object mapping preset names to presets")
        for name, body in doc.items():
            if name in raw:
                raise DataError(f"{f}: preset `{name}` is already defined in {origin[name]}")
            if not isinstance(body, dict):
                raise DataError(f"{f}: preset `{name}`: expected an object, got {type(body).__name__}")
            err = jsonschema.exceptions.best_match(validator.iter_errors(body))
            if err is not None:
                raise DataError(f"{f}: preset `{name}`: {_where(err)}{err.message}")
            raw[name] = body
            origin[name] = f
    return raw


def _where(err: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in err.absolute_path)
    return f"field `{path}`: " if path else ""


def _parents(name: str, body: dict[str, Any]) -> list[str]:
    ext = body.get("extends", [])
    return [ext] if isinstance(ext, str) else list(ext)


def _merge(into: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if key == "extends":
            continue
        if key in LIST_FIELDS and key in into:
            into[key] = list(dict.fromkeys([*into[key], *value]))
        else:
            into[key] = list(value) if isinstance(value, list) else value


def resolve(name: str, raw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Resolve one preset's inheritance chain.

    Raises:
        DataError: unknown preset or parent, or an inheritance cycle (names the preset and the chain).
    """
    if name not in raw:
        raise DataError(f"preset `{name}` is not defined (known: {', '.join(sorted(n for n in raw if not n.startswith('_')))})")

    def walk(n: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if n in chain:
            raise DataError(f"preset `{name}`: inheritance cycle {' -> '.join([*chain, n])}")
        out: dict[str, Any] = {}
        for parent in _parents(n, raw[n]):
            if parent not in raw:
                raise DataError(f"preset `{n}` extends unknown preset `{parent}`")
            inherited = walk(parent, (*chain, n))
            inherited.pop("description", None)  # a description speaks for its own preset only
            _merge(out, inherited)
        _merge(out, raw[n])
        return out

    body = walk(name, ())
    head = {"id": name} if not name.startswith("_") else {}
    head.update({k: body.pop(k) for k in ("name", "category", "description") if k in body})
    return {**head, **body, "parents": _ancestors(name, raw)}


def _ancestors(name: str, raw: dict[str, dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for p in _parents(name, raw[name]):
        for a in [p, *_ancestors(p, raw)]:
            if a not in seen:
                seen.append(a)
    return seen


def check_resolved(name: str, preset: dict[str, Any]) -> None:
    """Schema and musical sanity of one resolved preset; DataError names the preset."""
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(RESOLVED_SCHEMA).iter_errors(preset))
    if err is not None:
        raise DataError(f"preset `{name}`: {_where(err)}{err.message}")
    lo, hi = preset["tempo_range"]
    if lo >= hi:
        raise DataError(f"preset `{name}`: tempo_range [{lo}, {hi}] must rise")
    cat_lo, cat_hi = CATEGORY_TEMPO_BPM[preset["category"]]
    if lo < cat_lo or hi > cat_hi:
        raise DataError(f"preset `{name}`: tempo_range [{lo}, {hi}] leaves the {preset['category']} "
                        f"range [{cat_lo}, {cat_hi}]")
    prefix = CATEGORY_PREFIX[preset["category"]]
    if not name.startswith(prefix + "-"):
        raise DataError(f"preset `{name}`: category {preset['category']} presets are named {prefix}-NN")


class PresetLibrary:
    """All resolved presets of one folder, validated once."""

    def __init__(self, preset_dir: str | Path = DEFAULT_DIR):
        self.dir = Path(preset_dir)
        self.raw = load_raw(self.dir)
        self.presets: dict[str, dict[str, Any]] = {}
        for name in sorted(self.raw):
            resolved = resolve(name, self.raw)  # bases too: catches cycles/unknown parents among them
            if not name.startswith("_"):
                check_resolved(name, resolved)
                self.presets[name] = resolved
        log.debug("loaded %d presets from %s", len(self.presets), self.dir)

    def __contains__(self, name: str) -> bool:
        return name in self.presets

    def __getitem__(self, name: str) -> dict[str, Any]:
        if name not in self.presets:
            raise DataError(f"preset `{name}` is not defined in {self.dir} "
                            f"(known: {', '.join(self.ids())})")
        return self.presets[name]

    def ids(self) -> list[str]:
        return sorted(self.presets)

    def tempo_range(self, ids: Iterable[str]) -> tuple[float, float]:
        """Union of the tempo ranges of several presets (a track may carry more than one)."""
        ranges = [self[i]["tempo_range"] for i in ids]
        return float(min(r[0] for r in ranges)), float(max(r[1] for r in ranges))


def preset_caption(preset: dict[str, Any]) -> str:
    """The preset's own caption text (what a clip of this style says before any estimated attribute)."""
    parts = [*preset["base_tags"], *preset["mood"], *preset["instruments"], *preset["production"]]
    lo, hi = preset["tempo_range"]
    return ", ".join([*parts, f"{lo:g}-{hi:g} bpm"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lofi_lora.data.presets", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(DEFAULT_DIR), help="preset folder (default: presets/)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="one line per preset: id, category, tempo range, name")
    show = sub.add_parser("show", help="print a resolved preset as JSON")
    show.add_argument("preset")
    sub.add_parser("schema", help="print the JSON schema of a resolved preset")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "schema":
            sys.stdout.write(json.dumps(RESOLVED_SCHEMA, indent=2) + "\n")
            return 0
        lib = PresetLibrary(args.dir)
        if args.cmd == "list":
            for pid in lib.ids():
                p = lib[pid]
                lo, hi = p["tempo_range"]
                sys.stdout.write(f"{pid:9s} {p['category']:8s} {lo:g}-{hi:g} bpm  {p['name']}\n")
        else:
            p = dict(lib[args.preset])
            p["caption"] = preset_caption(p)
            sys.stdout.write(json.dumps(p, indent=2, ensure_ascii=False) + "\n")
    except DataError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
