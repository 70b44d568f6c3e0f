"""Stage `ingest`: which raw files may enter the pipeline at all.

A file gets in only with a licence/provenance entry whose licence is allowed, when it decodes, is long
enough and is not a duplicate of a file already kept (audio fingerprints, so a re-encoded, gain-changed or
trimmed copy is caught where a byte hash is not). All metadata is validated first, with the schema every stage
uses; symlinks are followed only inside the raw folder (rawfiles.py). Every file or metadata entry left out gets
a machine-readable reason in quarantine.json and the run goes on. Raw files are only ever opened for reading.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import unicodedata
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
from tqdm import tqdm

from lofi_lora.data import audio, trackscan
from lofi_lora.ingest import rawfiles
from lofi_lora.data.accounting import considered, failure, log_summary
from lofi_lora.core.config import require, to_plain
from lofi_lora.core.errors import DataError
from lofi_lora.ingest.fingerprint import FP_SAMPLE_RATE, Fingerprint, fingerprint_mono, match_all
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
    start: int = 0  # the frames of the file this probe covers (a part of a long file)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def probe(path: Path, start: int = 0, stop: int | None = None, hash_bytes: bool = True) -> Probe:
    """Decode frames `[start, stop)` of one raw file (read-only) in blocks, hash its bytes and fingerprint its
    audio. Any failure is this file's: it comes back as `error` (a one-line reason naming the file)."""
    if path.suffix.lower() in audio.FFMPEG_EXTS and audio.ffmpeg_exe() is None:
        return Probe(error=f"{path}: {path.suffix} needs the ffmpeg of the imageio-ffmpeg wheel, which is not installed",
                     reason="unsupported_format")
    try:
        cut = audio.truncation(path)
        if cut:
            return Probe(error=f"{path}: {cut}")
        s = trackscan.scan(path, start, stop, fp_rate=FP_SAMPLE_RATE, bandwidth=True)
        channels = audio.info(path).channels
    except (DataError, OSError) as e:
        return Probe(error=str(e))
    except Exception as e:  # a measurement that breaks on this file's audio stops this file only
        return Probe(error=failure(path, "decode + fingerprint", e), reason="processing_error")
    lufs = s.lufs
    return Probe(sample_rate=s.sample_rate, channels=channels, frames=s.frames, start=start,
                 format=path.suffix.lower().lstrip("."), sha256=sha256_file(path) if hash_bytes else "",
                 fingerprint=fingerprint_mono(s.fp_mono), bandwidth_hz=s.bandwidth_hz, lufs=lufs,
                 plr_db=20 * np.log10(s.peak) - lufs if s.peak > 0 and np.isfinite(lufs) else 0.0)


def _probe_part(task: tuple[Path, int, int | None, bool]) -> Probe:
    return probe(*task)


def parts(frames: int, sample_rate: int, max_s: float) -> list[tuple[int, int]]:
    """`[start, stop)` frames of the equal parts, each at most `max_s`, a long file is split into."""
    n = max(1, math.ceil(frames / (max_s * sample_rate))) if sample_rate else 1
    edges = [round(k * frames / n) for k in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


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
    by_hash: dict[tuple[str, int], int] = {}
    for i, p in enumerate(probes):  # identical bytes: the same part of identical files
        if not p.sha256:
            continue  # not hashed (its file's first part failed)
        j = by_hash.setdefault((p.sha256, p.start), i)
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
           allowed_licences: Iterable[str], min_s: float, duplicate_threshold: float, workers: int = 1,
           quality_scores: Path | None = None, max_track_s: float = math.inf,
           long_tracks: str = "split") -> tuple[dict, dict]:
    """Decide for every file under raw_dir: accepted or quarantined (with a reason). Returns (ingest, quarantine).

    The metadata is validated first (metadata.load_metadata, the validation annotate applies too); a track whose
    entries are unusable is quarantined with the file, key and reason, never trusted further. An entry whose file
    is missing is quarantined (missing_file). A file longer than `max_track_s` (its header says so before
    anything is decoded) is split into equal parts of at most that length (`long_tracks: split`: each part an
    accepted entry with `part`, `start_s`, `end_s` under the same track id) or quarantined (`refuse`: too_long).
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
    stale = rawfiles.unignored(raw_dir)
    if stale:
        log.warning("%s", rawfiles.unignored_message(raw_dir, stale))
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
    missing = sorted(set(sources) - seen_files)
    for rel in missing:
        quarantined.append(_q(raw_dir / rel, sources[rel]["track_id"], "missing_file",
                              f"sources.json lists {rel} but no such file is under {raw_dir}", quiet=True))
    log_summary(log, f"ingest: sources.json entries whose file is missing under {raw_dir} (quarantined: missing_file)",
                [f"{sources[rel]['track_id']}: {rel}" for rel in missing])
    for pr in (pr for prs in problems.values() for pr in prs):  # not tied to a file left out: the entry itself
        quarantined.append(_q(Path(pr.file), pr.track_id, pr.reason, str(pr)))

    tasks: list[tuple[Path, dict[str, Any], int, int]] = []  # (file, entry, part, of parts)
    spans: list[tuple[Path, int, int | None, bool]] = []
    for f, entry in candidates:
        try:
            head = audio.info(f)
        except (DataError, OSError) as e:
            quarantined.append(_q(f, entry["track_id"], "undecodable", str(e)))
            continue
        except Exception as e:  # a header no reader expected: this file's
            quarantined.append(_q(f, entry["track_id"], "undecodable", failure(f, "header", e)))
            continue
        split = parts(head.frames, head.sample_rate, max_track_s) if head.frames else [(0, None)]
        if len(split) > 1 and long_tracks == "refuse":
            quarantined.append(_q(f, entry["track_id"], "too_long",
                                  f"{head.duration_s:.0f} s > audio.max_track_s={max_track_s:g} "
                                  "(audio.long_tracks=refuse; `split` makes parts of it)"))
            continue
        for k, (a, b) in enumerate(split):
            tasks.append((f, entry, k, len(split)))
            spans.append((f, a, b if len(split) > 1 else None, k == 0))
    probes = map_with_progress(_probe_part, spans, workers, "ingest: decode + fingerprint")
    for i, (_, _, k, n) in enumerate(tasks):  # a file's bytes are hashed once, with its first part
        if k:
            probes[i] = dataclasses.replace(probes[i], sha256=probes[i - k].sha256)
    usable: list[tuple[Path, dict[str, Any], Probe]] = []
    labels: list[str] = []
    for i, ((f, entry, k, n), p) in enumerate(zip(tasks, probes)):
        if p.error and k and probes[i - k].error:
            continue  # the file's failure is reported once, with its first part
        if p.error:
            quarantined.append(_q(f, entry["track_id"], p.reason, p.error))
        elif p.duration_s < min_s:
            quarantined.append(_q(f, entry["track_id"], "too_short",
                                  f"{p.duration_s:.2f} s < ingest.min_s={min_s}"))
        else:
            usable.append((f, entry, p))
            labels.append(entry["track_id"] if n == 1 else f"{entry['track_id']}#part{k:03d}/{n}")

    duplicates = find_duplicates(labels, [p for _, _, p in usable], duplicate_threshold)
    dropped = {d["dropped"]: d for d in duplicates}
    accepted = []
    for label, (f, entry, p) in zip(labels, usable):
        tid = entry["track_id"]
        if label in dropped:
            d = dropped[label]
            quarantined.append(_q(f, tid, "duplicate", ("" if label == tid else f"{label}: ")
                                  + f"duplicate of {d['kept']} (similarity {d['similarity']})"))
            continue
        accepted.append({"track_id": tid, "path": f.as_posix(), "sha256": p.sha256, "duration_s": round(p.duration_s, 4),
                         "sample_rate": p.sample_rate, "channels": p.channels, "format": p.format,
                         "licence": entry["licence"], "attribution": entry.get("attribution", ""),
                         "provenance": entry.get("provenance", "")})
        if label != tid:  # a part of a long file
            k, n = map(int, label.rsplit("#part", 1)[1].split("/"))
            accepted[-1].update(part=k, parts=n, start_s=round(p.start / p.sample_rate, 4),
                                end_s=round((p.start + p.frames) / p.sample_rate, 4))
    accepted.sort(key=lambda a: (a["track_id"], a.get("part", 0)))
    quarantined.sort(key=lambda q: (q["path"], q["track_id"]))
    return {"version": 1, "accepted": accepted, "duplicates": duplicates}, {"quarantined": quarantined}


def _q(path: Path, track_id: str, reason: str, detail: str, quiet: bool = False) -> dict[str, str]:
    if not quiet:
        log.info("quarantine %s (%s): %s", path, reason, detail)
    return {"path": path.as_posix(), "track_id": track_id, "reason": reason, "detail": detail}


def run_ingest(cfg) -> dict[str, Any]:
    """Stage entry: data.raw_dir + the metadata of data.metadata_dir -> paths.interim/{ingest,quarantine}.json."""
    t0 = time.perf_counter()
    raw_dir = Path(require(cfg, "data.raw_dir"))
    ing = to_plain(require(cfg, "ingest"))
    audio_cfg = cfg["audio"]
    scores = audio_cfg["quality_scores"]
    result, quarantine = ingest(
        raw_dir, Path(require(cfg, "data.metadata_dir")), PresetLibrary(require(cfg, "paths.presets")),
        quality_scores=Path(scores) if scores else None,
        extensions=ing["extensions"], allowed_licences=ing["allowed_licences"], min_s=float(ing["min_s"]),
        duplicate_threshold=float(ing["duplicate_threshold"]), workers=int(ing["workers"]),
        max_track_s=float(audio_cfg["max_track_s"]), long_tracks=str(audio_cfg["long_tracks"]))
    with atomic_dir(require(cfg, "paths.interim")) as tmp:
        atomic_write_json(tmp / "ingest.json", result)
        atomic_write_json(tmp / "quarantine.json", quarantine)
    reasons = Counter(q["reason"] for q in quarantine["quarantined"])
    summary = {"files": considered(result, quarantine), "accepted": len(result["accepted"]),
               "quarantined": len(quarantine["quarantined"]), "duplicates": len(result["duplicates"]),
               **{f"quarantined_{k}": v for k, v in sorted(reasons.items())}, "seconds": round(time.perf_counter() - t0, 2)}
    log.info("ingest: %s", summary)
    return summary
