"""Stage `ingest`: which raw files may enter the pipeline at all.

A file gets in only with a licence/provenance entry whose licence is allowed, when it decodes, is long
enough and is not a duplicate of a file already kept (audio fingerprints, so a re-encoded, gain-changed or
trimmed copy is caught where a byte hash is not). Every file left out gets a machine-readable reason in
quarantine.json and the run goes on. Raw files are only ever opened for reading.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from tqdm import tqdm

from lofi_lora import audio
from lofi_lora.config import require, to_plain
from lofi_lora.errors import DataError
from lofi_lora.fingerprint import Fingerprint, fingerprint, match_all
from lofi_lora.fsutil import atomic_dir, atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

LOSSLESS = {"wav", "flac", "aiff", "aif"}
T = TypeVar("T")
R = TypeVar("R")


def map_with_progress(fn: Callable[[T], R], items: list[T], workers: int, desc: str) -> list[R]:
    """`[fn(x) for x in items]` in order, over `workers` processes when more than one, with a tqdm bar."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, desc=desc, unit="file")]
    with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="file"))


@dataclass(frozen=True)
class Probe:
    """What ingest learns from decoding one file (or why it could not)."""

    sample_rate: int = 0
    channels: int = 0
    frames: int = 0
    format: str = ""
    sha256: str = ""
    fingerprint: Fingerprint | None = None
    error: str | None = None
    reason: str = "undecodable"  # quarantine reason when `error` is set

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def probe(path: Path) -> Probe:
    """Decode one raw file (read-only), hash its bytes and fingerprint its audio."""
    if path.suffix.lower() in audio.FFMPEG_EXTS and audio.ffmpeg_exe() is None:
        return Probe(error=f"{path}: {path.suffix} needs the ffmpeg of the imageio-ffmpeg wheel, which is not installed",
                     reason="unsupported_format")
    try:
        cut = audio.truncation(path)
        if cut:
            return Probe(error=f"{path}: {cut}")
        data, sr = audio.read(path)
    except (DataError, OSError) as e:
        return Probe(error=str(e))
    return Probe(sample_rate=sr, channels=int(data.shape[0]), frames=int(data.shape[1]),
                 format=path.suffix.lower().lstrip("."), sha256=sha256_file(path), fingerprint=fingerprint(data, sr))


def list_audio_files(raw_dir: Path) -> list[Path]:
    """Every non-hidden file under raw_dir, sorted (the order decides nothing but the log)."""
    if not raw_dir.is_dir():
        raise DataError(f"data.raw_dir {raw_dir} does not exist or is not a folder")
    return sorted(p for p in raw_dir.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(raw_dir).parts))


def load_sources(path: Path) -> dict[str, dict[str, Any]]:
    """sources.json -> {file relative to raw_dir (posix): entry with its track_id}."""
    if not path.exists():
        log.warning("%s not found: every file will be quarantined as no_licence", path)
        return {}
    doc = read_json(path)
    tracks = doc.get("tracks") if isinstance(doc, dict) else None
    if not isinstance(tracks, dict):
        raise DataError(f"{path}: expected {{\"version\": 1, \"tracks\": {{track_id: {{file, licence, ...}}}}}}")
    by_file: dict[str, dict[str, Any]] = {}
    for track_id, entry in tracks.items():
        if not isinstance(entry, dict) or not entry.get("file"):
            raise DataError(f"{path}: tracks.{track_id} has no `file`")
        by_file[Path(entry["file"]).as_posix()] = {**entry, "track_id": track_id}
    return by_file


def licence_problem(entry: dict[str, Any] | None, allowed: set[str]) -> str | None:
    """Why a file may not be used for training, or None when its licence and provenance are in order."""
    if entry is None:
        return "no entry in sources.json"
    licence = entry.get("licence")
    if not licence:
        return "entry has no licence"
    if licence not in allowed:
        return f"licence {licence!r} is not in ingest.allowed_licences"
    if not entry.get("provenance"):
        return "entry has no provenance"
    return None


def _quality_rank(track_id: str, p: Probe) -> tuple:
    """Smaller is better: lossless first, then higher rate, more channels, longer, then the name."""
    return (p.format not in LOSSLESS, -p.sample_rate, -p.channels, -p.frames / max(p.sample_rate, 1), track_id)


def find_duplicates(ids: list[str], probes: list[Probe], threshold: float) -> list[dict[str, Any]]:
    """Group matching files (fingerprint or identical bytes) and keep the best of each group.

    Returns `[{"kept", "dropped", "similarity", "offset_s"}]` sorted by `dropped`.
    """
    edges: dict[tuple[int, int], tuple[float, float]] = {}
    for m in match_all([p.fingerprint for p in probes], threshold):
        edges[(m.a, m.b)] = (m.similarity, m.offset_s)
    by_hash: dict[str, int] = {}
    for i, p in enumerate(probes):
        j = by_hash.setdefault(p.sha256, i)
        if j != i:
            edges[(j, i)] = (1.0, 0.0)
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in range(len(ids)):
        groups.setdefault(root(i), []).append(i)
    pairs = []
    for members in groups.values():
        if len(members) < 2:
            continue
        keep = min(members, key=lambda i: _quality_rank(ids[i], probes[i]))
        for i in members:
            if i == keep:
                continue
            direct = edges.get((min(keep, i), max(keep, i)))
            sim, offset = direct if direct else max(v for k, v in edges.items() if i in k)
            if direct and i < keep:
                offset = -offset
            pairs.append({"kept": ids[keep], "dropped": ids[i], "similarity": round(sim, 4),
                          "offset_s": round(offset, 3) if direct else None})
    return sorted(pairs, key=lambda d: d["dropped"])


def ingest(raw_dir: Path, sources_path: Path, extensions: Iterable[str], allowed_licences: Iterable[str],
           min_seconds: float, duplicate_threshold: float, workers: int = 1) -> tuple[dict, dict]:
    """Decide for every file under raw_dir: accepted or quarantined (with a reason). Returns (ingest, quarantine)."""
    exts = {e.lower().lstrip(".") for e in extensions}
    allowed = set(allowed_licences)
    sources = load_sources(sources_path)
    files = list_audio_files(raw_dir)
    quarantined: list[dict[str, Any]] = []
    candidates: list[tuple[Path, dict[str, Any]]] = []
    seen_files: set[str] = set()
    for f in files:
        rel = f.relative_to(raw_dir).as_posix()
        seen_files.add(rel)
        entry = sources.get(rel)
        track_id = entry["track_id"] if entry else f.stem
        if f.suffix.lower().lstrip(".") not in exts:
            quarantined.append(_q(f, track_id, "unsupported_format", f"extension {f.suffix!r} not in ingest.extensions"))
            continue
        problem = licence_problem(entry, allowed)
        if problem:
            quarantined.append(_q(f, track_id, "no_licence", problem))
            continue
        candidates.append((f, entry))
    for rel in sorted(set(sources) - seen_files):
        log.warning("sources.json lists %s (track %s) but no such file is under %s", rel, sources[rel]["track_id"], raw_dir)

    probes = map_with_progress(probe, [f for f, _ in candidates], workers, "ingest: decode + fingerprint")
    usable: list[tuple[Path, dict[str, Any], Probe]] = []
    for (f, entry), p in zip(candidates, probes):
        if p.error:
            quarantined.append(_q(f, entry["track_id"], p.reason, p.error))
        elif p.duration_s < min_seconds:
            quarantined.append(_q(f, entry["track_id"], "too_short",
                                  f"{p.duration_s:.2f} s < ingest.min_seconds={min_seconds}"))
        else:
            usable.append((f, entry, p))

    ids = [e["track_id"] for _, e, _ in usable]
    duplicates = find_duplicates(ids, [p for _, _, p in usable], duplicate_threshold)
    dropped = {d["dropped"]: d for d in duplicates}
    accepted = []
    for f, entry, p in usable:
        tid = entry["track_id"]
        if tid in dropped:
            d = dropped[tid]
            quarantined.append(_q(f, tid, "duplicate", f"duplicate of {d['kept']} (similarity {d['similarity']})"))
            continue
        accepted.append({"track_id": tid, "path": f.as_posix(), "sha256": p.sha256, "duration_s": round(p.duration_s, 4),
                         "sample_rate": p.sample_rate, "channels": p.channels, "format": p.format,
                         "licence": entry["licence"], "attribution": entry.get("attribution", ""),
                         "provenance": entry.get("provenance", "")})
    accepted.sort(key=lambda a: a["track_id"])
    quarantined.sort(key=lambda q: q["path"])
    return {"version": 1, "accepted": accepted, "duplicates": duplicates}, {"quarantined": quarantined}


def _q(path: Path, track_id: str, reason: str, detail: str) -> dict[str, str]:
    log.info("quarantine %s (%s): %s", path, reason, detail)
    return {"path": path.as_posix(), "track_id": track_id, "reason": reason, "detail": detail}


def run_ingest(cfg) -> dict[str, Any]:
    """Stage entry: read data.raw_dir + data.metadata_dir/sources.json, write paths.interim/{ingest,quarantine}.json."""
    t0 = time.perf_counter()
    raw_dir = Path(require(cfg, "data.raw_dir"))
    ing = to_plain(require(cfg, "ingest"))
    result, quarantine = ingest(
        raw_dir, Path(require(cfg, "data.metadata_dir")) / "sources.json",
        extensions=ing["extensions"], allowed_licences=ing["allowed_licences"], min_seconds=float(ing["min_seconds"]),
        duplicate_threshold=float(ing["duplicate_threshold"]), workers=int(ing.get("workers", 1)))
    with atomic_dir(require(cfg, "paths.interim")) as tmp:
        atomic_write_json(tmp / "ingest.json", result)
        atomic_write_json(tmp / "quarantine.json", quarantine)
    reasons = Counter(q["reason"] for q in quarantine["quarantined"])
    summary = {"files": len(result["accepted"]) + len(quarantine["quarantined"]), "accepted": len(result["accepted"]),
               "quarantined": len(quarantine["quarantined"]), "duplicates": len(result["duplicates"]),
               **{f"quarantined_{k}": v for k, v in sorted(reasons.items())}, "seconds": round(time.perf_counter() - t0, 2)}
    log.info("ingest: %s", summary)
    return summary
