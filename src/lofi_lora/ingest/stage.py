"""Stage `ingest`: which raw files may enter the pipeline at all.

A file gets in only with a licence/provenance entry whose licence is allowed, when it decodes, is long
enough and is not a duplicate of a file already kept (audio fingerprints, so a re-encoded, gain-changed or
trimmed copy is caught where a byte hash is not). All metadata is validated first, with the schema every stage
uses; symlinks are followed only inside the raw folder (rawfiles.py). Every file or metadata entry left out gets
a machine-readable reason in quarantine.json and the run goes on. Raw files are only ever opened for reading.
"""
from __future__ import annotations

import logging
import time
import unicodedata
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
from tqdm import tqdm

from lofi_lora.data import audio

from lofi_lora.data import quality

from lofi_lora.ingest import rawfiles
from lofi_lora.core.config import require, to_plain
from lofi_lora.core.errors import DataError
from lofi_lora.ingest.fingerprint import Fingerprint, fingerprint, match_all
from lofi_lora.core.fsutil import atomic_dir, atomic_write_json, sha256_file
from lofi_lora.data.metadata import Problem, load_metadata
from lofi_lora.data.presets import PresetLibrary

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
    bandwidth_hz: float = 0.0  # measured: a lossy or upsampled copy ends lower
    lufs: float = float("-inf")  # measured: a copy turned down is quieter
    plr_db: float = 0.0  # peak-to-loudness ratio: a limited or clipped (louder) remaster has less
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
    clean = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    lufs, peak = quality.integrated_lufs(clean, sr), float(np.abs(clean).max(initial=0.0))
    return Probe(sample_rate=sr, channels=int(data.shape[0]), frames=int(data.shape[1]),
                 format=path.suffix.lower().lstrip("."), sha256=sha256_file(path), fingerprint=fingerprint(clean, sr),
                 bandwidth_hz=quality.bandwidth_hz(clean, sr), lufs=lufs,
                 plr_db=20 * np.log10(peak) - lufs if peak > 0 and np.isfinite(lufs) else 0.0)


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


# What makes one copy of a duplicate pair the better original, in order, with the margin that counts as a
# real difference: more audio (the other is trimmed), wider bandwidth (the other went through a lossy codec or
# was resampled down), more dynamics (the other was limited or clipped louder; 2 dB covers codec overshoot),
# louder at equal dynamics (the other was turned down), then lossless, channels. A higher sample rate alone is
# no evidence (an upsampled copy has one); bandwidth is its measured form.
_EVIDENCE = (("duration_s", 0.25, "s longer"), ("bandwidth_hz", 1000.0, "Hz more bandwidth"),
             ("plr_db", 2.0, "dB more peak-to-loudness range"), ("lufs", 1.0, "LU louder"))


def _evidence(a: Probe, b: Probe) -> str | None:
    """Why copy `a` is the better original than `b`, or None when it is not."""
    for field, margin, what in _EVIDENCE:
        x, y = getattr(a, field), getattr(b, field)
        x, y = (x if np.isfinite(x) else -1e9), (y if np.isfinite(y) else -1e9)
        if abs(x - y) > margin:
            return f"{x - y:.4g} {what}" if x > y else None
    for better, what in (((a.format in LOSSLESS) - (b.format in LOSSLESS), "lossless"),
                         (a.channels - b.channels, "more channels")):
        if better:
            return what if better > 0 else None
    return None


def find_duplicates(ids: list[str], probes: list[Probe], threshold: float) -> list[dict[str, Any]]:
    """Group matching files (fingerprint or identical bytes) and keep the better original of each group by
    measured evidence (`_EVIDENCE`), not by container format alone.

    Returns `[{"kept", "dropped", "similarity", "offset_s", "why"}]` sorted by `dropped`.
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
        members.sort(key=lambda i: ids[i])
        keep = members[0]
        for i in members[1:]:
            if _evidence(probes[i], probes[keep]):
                keep = i
        for i in members:
            if i == keep:
                continue
            direct = edges.get((min(keep, i), max(keep, i)))
            sim, offset = direct if direct else max(v for k, v in edges.items() if i in k)
            if direct and i < keep:
                offset = -offset
            pairs.append({"kept": ids[keep], "dropped": ids[i], "similarity": round(sim, 4),
                          "offset_s": round(offset, 3) if direct else None,
                          "why": _evidence(probes[keep], probes[i]) or "equal evidence; first id kept"})
    return sorted(pairs, key=lambda d: d["dropped"])


def _rel_key(path: str) -> str:
    """How a raw file is matched to its sources.json `file`: posix, `./` dropped, Unicode NFC (macOS writes NFD)."""
    return unicodedata.normalize("NFC", Path(path).as_posix())


def ingest(raw_dir: Path, metadata_dir: Path, presets: Any, extensions: Iterable[str],
           allowed_licences: Iterable[str], min_seconds: float, duplicate_threshold: float, workers: int = 1,
           quality_scores: Path | None = None) -> tuple[dict, dict]:
    """Decide for every file under raw_dir: accepted or quarantined (with a reason). Returns (ingest, quarantine).

    The metadata is validated first (metadata.load_metadata, the validation annotate applies too); a track whose
    entries are unusable is quarantined with the file, key and reason, never trusted further.
    """
    if not Path(raw_dir).is_dir():
        raise DataError(f"data.raw_dir {raw_dir} does not exist or is not a folder")
    exts = {e.lower().lstrip(".") for e in extensions}
    allowed = set(allowed_licences)
    meta = load_metadata(metadata_dir, presets, raw_dir, quality_scores)
    sources = {_rel_key(e["file"]): {**e, "track_id": tid} for tid, e in meta.sources.items()}
    problems: dict[str, list[Problem]] = {}
    quarantined: list[dict[str, Any]] = []
    for pr in meta.problems:
        problems.setdefault(_rel_key(pr.raw_file) if pr.raw_file else "", []).append(pr)
    files, refused = rawfiles.scan(raw_dir)
    for r in refused:
        quarantined.append(_q(r.path, r.path.stem, r.reason, r.detail))
    candidates: list[tuple[Path, dict[str, Any]]] = []
    seen_files: set[str] = set()
    for f in files:
        rel = _rel_key(f.relative_to(raw_dir).as_posix())
        seen_files.add(rel)
        entry = sources.get(rel)
        if entry is None and rel in problems:
            pr = problems.pop(rel)[0]
            quarantined.append(_q(f, pr.track_id, pr.reason, str(pr)))
            continue
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
    for pr in (pr for prs in problems.values() for pr in prs):  # not tied to a file left out: the entry itself
        quarantined.append(_q(Path(pr.file), pr.track_id, pr.reason, str(pr)))

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
    quarantined.sort(key=lambda q: (q["path"], q["track_id"]))
    return {"version": 1, "accepted": accepted, "duplicates": duplicates}, {"quarantined": quarantined}


def _q(path: Path, track_id: str, reason: str, detail: str) -> dict[str, str]:
    log.info("quarantine %s (%s): %s", path, reason, detail)
    return {"path": path.as_posix(), "track_id": track_id, "reason": reason, "detail": detail}


def run_ingest(cfg) -> dict[str, Any]:
    """Stage entry: data.raw_dir + the metadata of data.metadata_dir -> paths.interim/{ingest,quarantine}.json."""
    t0 = time.perf_counter()
    raw_dir = Path(require(cfg, "data.raw_dir"))
    ing = to_plain(require(cfg, "ingest"))
    scores = cfg["audio"]["quality_scores"]
    result, quarantine = ingest(
        raw_dir, Path(require(cfg, "data.metadata_dir")), PresetLibrary(require(cfg, "paths.presets")),
        quality_scores=Path(scores) if scores else None,
        extensions=ing["extensions"], allowed_licences=ing["allowed_licences"], min_seconds=float(ing["min_seconds"]),
        duplicate_threshold=float(ing["duplicate_threshold"]), workers=int(ing["workers"]))
    with atomic_dir(require(cfg, "paths.interim")) as tmp:
        atomic_write_json(tmp / "ingest.json", result)
        atomic_write_json(tmp / "quarantine.json", quarantine)
    reasons = Counter(q["reason"] for q in quarantine["quarantined"])
    summary = {"files": len(result["accepted"]) + len(quarantine["quarantined"]), "accepted": len(result["accepted"]),
               "quarantined": len(quarantine["quarantined"]), "duplicates": len(result["duplicates"]),
               **{f"quarantined_{k}": v for k, v in sorted(reasons.items())}, "seconds": round(time.perf_counter() - t0, 2)}
    log.info("ingest: %s", summary)
    return summary
