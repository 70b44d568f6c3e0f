"""Track metadata: licences (sources.json), styles (style_mapping.json) and clip quality scores.

Each file has a JSON schema, applied once per entry: a malformed file raises DataError, a bad entry becomes a
Problem naming the file, the key and the reason (e.g. `style_mapping.json: tracks.t003[1]: unknown preset
CORE-99`) and its track is left out. Stage ingest runs this validation first and quarantines those tracks;
annotate runs the same one. Formats are in docs/ARCHITECTURE.md. quality_scores.json is written by stage preprocess; this module owns its schema,
validator (the merge that keeps human scores across runs lives in preprocess).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Mapping

import jsonschema

from lofi_lora.data.accounting import log_summary
from lofi_lora.core.errors import DataError
from lofi_lora.core.fsutil import SAFE_NAME, is_safe_name, read_json

log = logging.getLogger(__name__)

SOURCES_FILE = "sources.json"
STYLE_MAPPING_FILE = "style_mapping.json"
QUALITY_SCORES_FILE = "quality_scores.json"
QUALITY_SCORES_VERSION = 1

TRACK_ID = SAFE_NAME  # a track id names output files (clips, sidecars, cache entries)
_nonempty = {"type": "string", "minLength": 1}
_timestamp = {"type": "string", "format": "date-time", "minLength": 20}


_ENVELOPE: dict[str, Any] = {  # `{"version": 1, "tracks": {<track_id>: entry}}`: every per-track file
    "type": "object",
    "required": ["version", "tracks"],
    "additionalProperties": False,
    "properties": {"version": {"const": 1}, "tracks": {"type": "object"}},
}


def _tracks_file_schema(entry: dict[str, Any]) -> dict[str, Any]:
    """The whole-file schema (envelope + id pattern + entry), for documentation and external tools."""
    tracks = {"type": "object", "propertyNames": {"pattern": TRACK_ID}, "additionalProperties": entry}
    return {**_ENVELOPE, "properties": {**_ENVELOPE["properties"], "tracks": tracks}}


# One entry per track; extend these (not the loaders) to add per-track fields.
SOURCES_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file", "licence", "provenance", "attribution"],
    "properties": {"file": _nonempty, "licence": _nonempty, "provenance": _nonempty,
                   "attribution": _nonempty, "url": {"type": "string"}, "notes": {"type": "string"},
                   # Optional labels the user knows; stage annotate uses them instead of its estimates.
                   "bpm": {"type": "number", "minimum": 30, "maximum": 240},
                   "keyscale": {"type": "string", "pattern": r"^[A-Ga-g][#b]? (major|minor)$"}},
}
STYLE_ENTRY_SCHEMA: dict[str, Any] = {"type": "array", "items": _nonempty, "minItems": 1, "uniqueItems": True}

SOURCES_SCHEMA: dict[str, Any] = _tracks_file_schema(SOURCES_ENTRY_SCHEMA)
STYLE_MAPPING_SCHEMA: dict[str, Any] = _tracks_file_schema(STYLE_ENTRY_SCHEMA)

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
    err = _first_error(doc, schema)
    if err is not None:
        raise DataError(f"{path}: {err}")


def _first_error(doc: Any, schema: Mapping[str, Any]) -> str | None:
    """`key: reason` of the most relevant schema violation (the key left out at the top level), or None."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    err = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    return None if err is None else f"{_key(err)}: {err.message}".removeprefix("<top level>: ")


@dataclass(frozen=True)
class Problem:
    """One metadata entry that cannot be used: where it is (file, key), a reason code and the details."""

    file: str
    key: str
    reason: str  # bad_metadata (unsafe id or path, unknown preset) | no_licence | no_style
    detail: str
    track_id: str = ""
    raw_file: str | None = None  # the raw file the entry names, when it names one

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.detail}"


def raw_path_problem(file: str, raw_dir: str | Path | None) -> str | None:
    """Why `file` (from sources.json) may not be read as a raw file: it must stay inside data.raw_dir,
    also after following symlinks; None when it does."""
    pure = PurePosixPath(file)
    if pure.is_absolute() or PureWindowsPath(file).is_absolute() or "\\" in file:
        return f"`{file}` must be a path relative to data.raw_dir"
    if ".." in pure.parts:
        return f"`{file}` contains `..`; paths stay inside data.raw_dir"
    if raw_dir is not None:
        base = os.path.realpath(raw_dir)
        try:
            real = Path(base, file).resolve(strict=False)
        except (OSError, RuntimeError) as e:  # a symlink loop
            return f"`{file}` cannot be resolved ({e})"
        if os.path.commonpath([str(real), base]) != base:
            return f"`{file}` resolves to {real}, outside data.raw_dir"
    return None


def _read_tracks(path: str | Path, entry_schema: Mapping[str, Any], reason: str = "bad_metadata"
                 ) -> tuple[dict[str, Any], list[Problem]]:
    """The entries of a per-track file that pass the id and entry schema, and a Problem for every other one.

    A malformed file (invalid JSON, wrong version, no `tracks`) is a DataError: nothing in it can be trusted.
    """
    doc = read_json(_exists(path))
    validate(doc, _ENVELOPE, path)
    good: dict[str, Any] = {}
    problems: list[Problem] = []
    for tid, entry in doc["tracks"].items():
        file = entry.get("file") if isinstance(entry, dict) and isinstance(entry.get("file"), str) else None
        if not is_safe_name(tid):
            problems.append(Problem(str(path), f"tracks.{tid!r}", "bad_metadata",
                                    f"track id {tid!r} must match {TRACK_ID} (it names output files)", tid, file))
            continue
        err = _first_error(entry, entry_schema)
        if err:
            problems.append(Problem(str(path), f"tracks.{tid}", reason, err, tid, file))
            continue
        good[tid] = entry
    return good, problems


def _strict(result: tuple[dict[str, Any], list[Problem]]) -> dict[str, Any]:
    if result[1]:
        raise DataError(str(result[1][0]))
    return result[0]


def check_sources(path: str | Path, raw_dir: str | Path | None = None) -> tuple[dict[str, dict[str, str]], list[Problem]]:
    """sources.json: usable track_id -> {file, licence, provenance, attribution}, and the entries left out."""
    tracks, problems = _read_tracks(path, SOURCES_ENTRY_SCHEMA, "no_licence")  # licence/provenance incomplete
    owner: dict[str, str] = {}
    for tid, entry in list(tracks.items()):
        why = raw_path_problem(entry["file"], raw_dir)
        if why is None and PurePosixPath(entry["file"]).as_posix() in owner:
            why = f"`{entry['file']}` is already the file of track {owner[PurePosixPath(entry['file']).as_posix()]}"
        if why:
            problems.append(Problem(str(path), f"tracks.{tid}.file", "bad_metadata", why, tid, entry["file"]))
            del tracks[tid]
        else:
            owner[PurePosixPath(entry["file"]).as_posix()] = tid
    return tracks, problems


def check_style_mapping(path: str | Path, preset_ids: Any = None, sources: Mapping[str, Any] | None = None
                        ) -> tuple[dict[str, list[str]], list[Problem]]:
    """style_mapping.json: usable track_id -> preset ids (each known to `preset_ids`, a PresetLibrary or ids),
    and the entries left out; with `sources`, a style for a track without a licence entry is left out too."""
    tracks, problems = _read_tracks(path, STYLE_ENTRY_SCHEMA)
    known = set(preset_ids.ids() if hasattr(preset_ids, "ids") else preset_ids) if preset_ids is not None else None
    for tid, ids in list(tracks.items()):
        why, key, reason = None, f"tracks.{tid}", "bad_metadata"
        for i, pid in enumerate(ids):
            if pid.startswith("_"):
                why, key = f"`{pid}` is a base preset; assign a style preset", f"tracks.{tid}[{i}]"
            elif known is not None and pid not in known:
                why, key = f"unknown preset `{pid}` (not in presets/)", f"tracks.{tid}[{i}]"
            if why:
                break
        if why is None and sources is not None and tid not in sources:
            why, reason = f"track has no usable entry in {SOURCES_FILE} (licence unknown)", "no_licence"
        if why:
            problems.append(Problem(str(path), key, reason, why, tid))
            del tracks[tid]
    return tracks, problems


def load_sources(path: str | Path, raw_dir: str | Path | None = None) -> dict[str, dict[str, str]]:
    """track_id -> {file, licence, provenance, attribution}; the first bad entry is a DataError."""
    return _strict(check_sources(path, raw_dir))


def load_style_mapping(path: str | Path, preset_ids: Any = None,
                       sources: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """track_id -> preset ids; the first bad entry (unknown preset, no licence entry...) is a DataError."""
    return _strict(check_style_mapping(path, preset_ids, sources))


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
    """sources + style mapping of one metadata folder, cross-checked; `problems` lists every entry left out."""

    sources: dict[str, dict[str, str]]
    styles: dict[str, list[str]]
    problems: tuple[Problem, ...] = ()

    def styles_of(self, track_id: str, where: str = STYLE_MAPPING_FILE) -> list[str]:
        if track_id not in self.styles:
            raise DataError(f"{where}: tracks.{track_id}: no style preset assigned to this track")
        return self.styles[track_id]


def load_metadata(metadata_dir: str | Path, presets: Any, raw_dir: str | Path | None = None,
                  quality_scores: str | Path | None = None) -> TrackMetadata:
    """The one validation of a metadata folder that every stage uses (ingest first, then annotate).

    A malformed file is a DataError. A bad entry (unsafe id, path leaving `raw_dir`, unknown preset) and a
    track that has a licence entry without a style or a style without a licence entry are left out of the
    result and reported in `problems`, so one bad track never stops the others. `quality_scores`, when the
    file exists, is validated too.
    """
    d = Path(metadata_dir)
    sources, problems = check_sources(d / SOURCES_FILE, raw_dir)
    styles, style_problems = check_style_mapping(d / STYLE_MAPPING_FILE, presets, sources)
    reported = {p.track_id for p in problems}  # a bad licence entry is reported once, not again for its style
    problems += [p for p in style_problems if p.track_id not in reported]
    bad_styles = {p.track_id for p in style_problems}
    for tid in sorted(set(sources) - set(styles)):
        why = ("its style entry is not usable" if tid in bad_styles
               else f"track has no entry in {STYLE_MAPPING_FILE} (no style preset)")
        problems.append(Problem(str(d / STYLE_MAPPING_FILE), f"tracks.{tid}", "no_style", why, tid,
                                sources.pop(tid)["file"]))
    if quality_scores is not None and Path(quality_scores).exists():
        load_quality_scores(quality_scores)
    log_summary(log, "metadata: entries left out", [str(p) for p in problems])
    log.info("metadata %s: %d usable tracks, %d entries left out", d, len(sources), len(problems))
    return TrackMetadata(sources, styles, tuple(problems))


def _exists(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: metadata file not found")
    return p
