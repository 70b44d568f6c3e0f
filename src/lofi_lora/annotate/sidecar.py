"""The per-clip sidecar in the ACE-Step 1.5 format (`<clip_id>.json`) and the v1 pair (`_prompt.txt`,
`_lyrics.txt`): schema, validation and atomic writing.

The 1.5 loaders read `caption, lyrics, bpm, keyscale, timesignature, vocal_language, duration`; the rest
(`artist, events, style_ids, track_id, clip_id, source.rich_details`) is kept for traceability.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lofi_lora.core.errors import DataError
from lofi_lora.core.fsutil import atomic_write_json, atomic_write_text, path_inside, read_json
from lofi_lora.data.metadata import validate

KEYSCALE_RE = r"^[A-G](#|b)? (major|minor)$"

SIDECAR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["caption", "lyrics", "bpm", "keyscale", "timesignature", "vocal_language", "duration",
                 "artist", "events", "style_ids", "track_id", "clip_id", "source"],
    "properties": {
        "caption": {"type": "string", "minLength": 1},
        "lyrics": {"type": "string", "minLength": 1},
        "bpm": {"type": ["integer", "null"], "minimum": 30, "maximum": 300},
        "keyscale": {"anyOf": [{"type": "string", "pattern": KEYSCALE_RE}, {"type": "null"}]},
        "timesignature": {"type": "string", "pattern": r"^[1-9][0-9]?(/[1-9][0-9]?)?$"},
        "vocal_language": {"type": "string", "minLength": 2},
        "duration": {"type": "number", "exclusiveMinimum": 0},
        "artist": {"type": "string"},
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["start", "end", "type", "intensity"],
                "properties": {"start": {"type": "number", "minimum": 0}, "end": {"type": "number", "minimum": 0},
                               "type": {"type": "string"}, "intensity": {"type": "number", "minimum": 0, "maximum": 1},
                               "label": {"type": "string"}},
            },
        },
        "style_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "track_id": {"type": "string", "minLength": 1},
        "clip_id": {"type": "string", "minLength": 1},
        "source": {"type": "object", "required": ["rich_details"],
                   "properties": {"rich_details": {"type": "object"}}},
    },
}


def check_sidecar(doc: dict[str, Any], where: str | Path) -> None:
    """Schema plus the invariants a schema cannot say (events inside the clip, in order)."""
    validate(doc, SIDECAR_SCHEMA, where)
    prev_end = 0.0
    for i, e in enumerate(doc["events"]):
        if e["end"] <= e["start"] or e["start"] < prev_end - 1e-6 or e["end"] > doc["duration"] + 0.05:
            raise DataError(f"{where}: events[{i}]: [{e['start']}, {e['end']}] is not an ordered span inside "
                            f"the clip (duration {doc['duration']})")
        prev_end = e["end"]


def write_sidecars(out_dir: Path, doc: dict[str, Any], prompt: str) -> None:
    """`<clip_id>.json` (1.5) plus `<clip_id>_prompt.txt` / `<clip_id>_lyrics.txt` (v1), each atomically."""
    cid = doc["clip_id"]
    check_sidecar(doc, out_dir / f"{cid}.json")
    atomic_write_json(path_inside(out_dir, f"{cid}.json"), doc)
    atomic_write_text(path_inside(out_dir, f"{cid}_prompt.txt"), prompt + "\n")
    atomic_write_text(path_inside(out_dir, f"{cid}_lyrics.txt"), doc["lyrics"] + "\n")


def load_sidecar(path: str | Path) -> dict[str, Any]:
    """Read and validate one `<clip_id>.json`."""
    doc = read_json(path)
    check_sidecar(doc, path)
    return doc
