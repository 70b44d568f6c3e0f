"""Track metadata: licences (sources.json), styles (style_mapping.json) and clip quality scores.

Each file has a JSON schema; a malformed or inconsistent file raises DataError naming the file, the key
and the reason (e.g. `style_mapping.json: tracks.t003[1]: unknown preset CORE-99`). Formats are in
docs/ARCHITECTURE.md. quality_scores.json is written by stage preprocess; this module owns its schema,
validator and the merge that keeps human scores across runs.
"""
from __future__ import annotations

import datetime as dt
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

SOURCES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "tracks"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "tracks": {
            "type": "object",
            "propertyNames": {"pattern": _TRACK_ID},
            "additionalProperties": {
                "type": "object",
                "required": ["file", "licence", "provenance", "attribution"],
                "properties": {"file": _nonempty, "licence": _nonempty, "provenance": _nonempty,
                               "attribution": _nonempty, "url": {"type": "string"}, "notes": {"type": "string"}},
            },
        },
    },
}

STYLE_MAPPING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "tracks"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "tracks": {
            "type": "object",
            "propertyNames": {"pattern": _TRACK_ID},
            "additionalProperties": {"type": "array", "items": _nonempty, "minItems": 1, "uniqueItems": True},
        },
    },
}

_score_value = {"type": ["number", "boolean", "null"]}
QUALITY_SCORES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "updated", "clips"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": QUALITY_SCORES_VERSION},
        "updated": _timestamp,
        "clips": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["track_id"],
                "additionalProperties": False,
                "properties": {
                    "track_id": _nonempty,
                    "automated": {
                        "type": "object",
                        "required": ["scores", "timestamp", "scorer_version"],
                        "additionalProperties": False,
                        "properties": {"scores": {"type": "object", "additionalProperties": _score_value},
                                       "timestamp": _timestamp, "scorer_version": _nonempty},
                    },
                    "human": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["rater", "score", "timestamp"],
                            "additionalProperties": False,
                            "properties": {"rater": _nonempty, "score": {"type": "number", "minimum": 1, "maximum": 5},
                                           "note": {"type": "string"}, "timestamp": _timestamp},
                        },
                    },
                },
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
    """The whole quality_scores.json document, validated (human scores are kept by `merge_quality_scores`)."""
    doc = read_json(_exists(path))
    validate(doc, QUALITY_SCORES_SCHEMA, path)
    return doc


def merge_quality_scores(previous: Mapping[str, Any] | None, automated: Mapping[str, Mapping[str, Any]],
                         track_ids: Mapping[str, str], scorer_version: str,
                         now: dt.datetime | None = None) -> dict[str, Any]:
    """New quality_scores.json content: fresh automated scores, human scores carried over unchanged.

    Args:
        previous: the last document (or None); its human scores survive even for clips not rescored.
        automated: clip_id -> {score name: value} from this run.
        track_ids: clip_id -> track_id for the clips in `automated`.
        scorer_version: version string of the scoring code (stored per clip).
    """
    stamp = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    clips: dict[str, Any] = {}
    for cid, entry in ((previous or {}).get("clips") or {}).items():
        if entry.get("human"):
            clips[cid] = {"track_id": entry["track_id"], "human": list(entry["human"])}
    for cid, scores in automated.items():
        clips.setdefault(cid, {"track_id": track_ids[cid]})
        clips[cid]["track_id"] = track_ids[cid]
        clips[cid]["automated"] = {"scores": dict(scores), "timestamp": stamp, "scorer_version": scorer_version}
    doc = {"version": QUALITY_SCORES_VERSION, "updated": stamp, "clips": dict(sorted(clips.items()))}
    validate(doc, QUALITY_SCORES_SCHEMA, QUALITY_SCORES_FILE)
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
