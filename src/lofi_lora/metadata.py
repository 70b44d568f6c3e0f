"""Track metadata: licences (sources.json), styles (style_mapping.json) and clip quality scores.

Each file has a JSON schema; a malformed or inconsistent file raises DataError naming the file, the key
and the reason (e.g. `style_mapping.json: tracks.t003[1]: unknown preset CORE-99`). Formats are in
docs/ARCHITECTURE.md. quality_scores.json is written by stage preprocess; this module owns its schema,
validator (the merge that keeps human scores across runs lives in preprocess).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jsonschema

from lofi_lora.errors import DataError
from lofi_lora.fsutil import read_json

log = logging.getLogger(__name__)

SOURCES_FILE = "sources.json"
STYLE_MAPPING_FILE = "style_mapping.json"
QUALITY_SCORES_FILE = "quality_scores.json"
QUALITY_SCORES_VERSION = 1

_TRACK_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_nonempty = {"type": "string", "minLength": 1}
_timestamp = {"type": "string", "format": "date-time", "minLength": 20}


def _tracks_file_schema(entry: dict[str, Any]) -> dict[str, Any]:
    """`{"version": 1, "tracks": {<track_id>: entry}}`: the envelope every per-track metadata file shares."""
    return {
        "type": "object",
        "required": ["version", "tracks"],
        "additionalProperties": False,
        "properties": {
            "version": {"const": 1},
            "tracks": {"type": "object", "propertyNames": {"pattern": _TRACK_ID}, "additionalProperties": entry},
        },
    }


SOURCES_SCHEMA: dict[str, Any] = _tracks_file_schema({
    "type": "object",
    "required": ["file", "licence", "provenance", "attribution"],
    "properties": {"file": _nonempty, "licence": _nonempty, "provenance": _nonempty,
                   "attribution": _nonempty, "url": {"type": "string"}, "notes": {"type": "string"}},
})

STYLE_MAPPING_SCHEMA: dict[str, Any] = _tracks_file_schema(
    {"type": "array", "items": _nonempty, "minItems": 1, "uniqueItems": True})

_score_value = {"type": ["number", "boolean", "string", "null"]}
# The shape stage preprocess writes (preprocess.merge_scores): automated scores replaced on every run,
# human scores carried over, clips that no longer exist kept (current: false) while they hold human scores.
QUALITY_SCORES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "scorer_version", "clips"],
    "properties": {
        "version": {"const": QUALITY_SCORES_VERSION},
        "scorer_version": _nonempty,
        "updated_at": _timestamp,
        "clips": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["current"],
                "properties": {
                    "current": {"type": "boolean"},
                    "automated": {
                        "type": "object",
                        "required": ["score", "scorer_version"],
                        "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1},
                                       "scorer_version": _nonempty, "scored_at": _timestamp},
                        "additionalProperties": _score_value,
                    },
                    "human": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["rater", "score", "timestamp"],
                            "properties": {"rater": _nonempty, "score": {"type": "number", "minimum": 1, "maximum": 5},
                                           "note": {"type": "string"}, "timestamp": _timestamp},
                        },
                    },
                },
                "anyOf": [{"required": ["automated"]}, {"required": ["human"]}],
            },
        },
    },
}


def _key(err: jsonschema.ValidationError) -> str:
    out = ""
    for p in err.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def validate(doc: Any, schema: Mapping[str, Any], path: str | Path) -> None:
    """Check `doc` against `schema`; the DataError names the file, the key and the reason."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    err = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if err is not None:
        raise DataError(f"{path}: {_key(err)}: {err.message}")


def load_sources(path: str | Path) -> dict[str, dict[str, str]]:
    """track_id -> {file, licence, provenance, attribution}."""
    doc = read_json(_exists(path))
    validate(doc, SOURCES_SCHEMA, path)
    return doc["tracks"]


def load_style_mapping(path: str | Path, preset_ids: Any = None,
                       sources: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """track_id -> preset ids, each checked against `preset_ids` (a PresetLibrary or a set of ids).

    With `sources`, a track that has a style but no licence entry is inconsistent and rejected.
    """
    doc = read_json(_exists(path))
    validate(doc, STYLE_MAPPING_SCHEMA, path)
    tracks: dict[str, list[str]] = doc["tracks"]
    known = set(preset_ids.ids() if hasattr(preset_ids, "ids") else preset_ids) if preset_ids is not None else None
    for tid, ids in tracks.items():
        for i, pid in enumerate(ids):
            if pid.startswith("_"):
                raise DataError(f"{path}: tracks.{tid}[{i}]: `{pid}` is a base preset; assign a style preset")
            if known is not None and pid not in known:
                raise DataError(f"{path}: tracks.{tid}[{i}]: unknown preset `{pid}` (not in presets/)")
        if sources is not None and tid not in sources:
            raise DataError(f"{path}: tracks.{tid}: track has no entry in {SOURCES_FILE} (licence unknown)")
    return tracks


def load_quality_scores(path: str | Path) -> dict[str, Any]:
    """The whole quality_scores.json document, validated; a clip marked current must have automated scores."""
    doc = read_json(_exists(path))
    validate(doc, QUALITY_SCORES_SCHEMA, path)
    for cid, entry in doc["clips"].items():
        if entry["current"] and "automated" not in entry:
            raise DataError(f"{path}: clips.{cid}: marked current but has no automated scores")
    return doc


@dataclass(frozen=True)
class TrackMetadata:
    """sources + style mapping of one metadata folder, cross-checked."""

    sources: dict[str, dict[str, str]]
    styles: dict[str, list[str]]

    def styles_of(self, track_id: str, where: str = STYLE_MAPPING_FILE) -> list[str]:
        if track_id not in self.styles:
            raise DataError(f"{where}: tracks.{track_id}: no style preset assigned to this track")
        return self.styles[track_id]


def load_metadata(metadata_dir: str | Path, presets: Any) -> TrackMetadata:
    """Load and cross-check sources.json and style_mapping.json of `metadata_dir`."""
    d = Path(metadata_dir)
    sources = load_sources(d / SOURCES_FILE)
    styles = load_style_mapping(d / STYLE_MAPPING_FILE, presets, sources)
    log.info("metadata %s: %d sources, %d styled tracks", d, len(sources), len(styles))
    return TrackMetadata(sources, styles)


def _exists(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: metadata file not found")
    return p
