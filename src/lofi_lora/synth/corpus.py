"""The default corpus: good lofi tracks in mixed formats, long tracks, deliberately bad files, a duplicate.

Everything follows from `cfg.seed` and `cfg.synth`, so the same parameters give byte-identical files (DVC hashes
bytes). Writes `<paths.synth>/<track_id>.<ext>` and, under `paths.synth_metadata`, `sources.json`,
`style_mapping.json` and `truth.json` (docs/ARCHITECTURE.md), each folder swapped in whole.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lofi_lora.data import audio
from lofi_lora.core.config import require
from lofi_lora.core.errors import ConfigError
from lofi_lora.core.fsutil import atomic_dir, atomic_write_bytes, atomic_write_json
from lofi_lora.synth.render import TrackSpec, render_track
from lofi_lora.synth.styles import RENDERABLE, renderable_ids

log = logging.getLogger(__name__)

CATEGORIES = ("CORE", "JAZZ", "AMB", "CHILL", "DUSK")
ATTRIBUTION = "lofi-lora project"
TRUNCATE_AT_BYTES = 40  # inside FLAC's STREAMINFO block (the header is 42 bytes): no decoder can open it


@dataclass(frozen=True)
class Job:
    """One file to write: the music (spec), what kind of file it is, its format and preset ids."""

    spec: TrackSpec
    kind: str
    fmt: str
    style_ids: tuple[str, ...]
    licensed: bool = True
    params: dict = field(default_factory=dict, compare=False)

    @property
    def file(self) -> str:
        return f"{self.spec.track_id}.{self.fmt}"


def plan_corpus(cfg: Any) -> list[Job]:
    """Every file of the corpus, in a fixed order, drawn from one generator seeded by `cfg.seed`."""
    s = require(cfg, "synth")
    seed = int(require(cfg, "seed"))
    formats = [str(f).lower() for f in s["formats"]]
    for f in formats:
        if f not in ("wav", "flac", "mp3", "ogg"):
            raise ConfigError(f"synth.formats: {f!r} is not one of wav, flac, mp3, ogg")
        if f == "ogg":
            log.warning("synth.formats has ogg: libsndfile writes a random Ogg serial, files differ run to run")
    lo, hi = (float(x) for x in s.track_s)
    rng = np.random.default_rng([seed, 0x5EED])
    jobs: list[Job] = []
    waltz_left = bool(s["waltz"])
    offsets = {cat: int(rng.integers(len(renderable_ids(cat)))) for cat in CATEGORIES}

    def spec(track_id: str, index: int, seconds: float, bpb: int = 4) -> tuple[TrackSpec, tuple[str, ...]]:
        """A preset the voices can play, then tempo and key from that preset's own range and preferences."""
        cat = CATEGORIES[index % len(CATEGORIES)]
        options = renderable_ids(cat)
        first = options[(index // len(CATEGORIES) + offsets[cat]) % len(options)]  # rotate through the family
        fit = RENDERABLE[first]
        bpm = float(rng.integers(fit.tempo_range[0], fit.tempo_range[1] + 1))
        tonic, mode = fit.keys[int(rng.integers(len(fit.keys)))].split()
        ids = [first]
        second = [p for p in options
                  if p != first and RENDERABLE[p].tempo_range[0] <= bpm <= RENDERABLE[p].tempo_range[1]]
        if second and rng.random() < 0.5:
            ids.append(second[int(rng.integers(len(second)))])
        track_seed = int(rng.integers(2**31 - 1))
        return TrackSpec(track_id, first, bpm, tonic, mode, seconds, track_seed, bpb), tuple(ids)

    for i in range(int(s.n_tracks)):
        cat = CATEGORIES[i % len(CATEGORIES)]
        bpb = 3 if (waltz_left and cat == "JAZZ") else 4
        waltz_left = waltz_left and bpb == 4
        sp, ids = spec(f"synth_{i + 1:02d}_{cat.lower()}", i, float(rng.uniform(lo, hi)), bpb)
        jobs.append(Job(sp, "good", formats[i % len(formats)], ids))
    for j in range(int(s.n_long)):
        idx = int(s.n_tracks) + j
        cat = CATEGORIES[idx % len(CATEGORIES)]
        sp, ids = spec(f"long_{j + 1:02d}_{cat.lower()}", idx, float(s.long_s))
        jobs.append(Job(sp, "long", "flac", ids))
    if s.bad_files:
        bad_s = float(s["bad_s"])
        for j, (kind, fmt) in enumerate((("clipped", "wav"), ("silent", "flac"), ("mono_22k", "wav"),
                                         ("truncated", "flac"), ("unlicensed", "wav"))):
            sp, ids = spec(f"bad_{j + 1:02d}_{kind}", j, bad_s)
            jobs.append(Job(sp, kind, fmt, ids, licensed=kind != "unlicensed",
                            params={"silent_dbfs": float(s["silent_dbfs"])}))
    return jobs


def _bad_transform(job: Job, x: np.ndarray, sr: int) -> tuple[np.ndarray, int, str | None]:
    """Turn rendered music into the deliberately bad file of `job.kind`: (audio, sample rate, subtype)."""
    if job.kind == "clipped":
        gain = 1.0 / float(np.quantile(np.abs(x), 0.96))  # ~4 % of samples beyond full scale
        return np.clip(x * gain, -1.0, 1.0), sr, "PCM_16"
    if job.kind == "silent":
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        return x * (10 ** (job.params["silent_dbfs"] / 20) / rms), sr, "PCM_24"
    if job.kind == "mono_22k":
        return audio.resample(x.mean(axis=0, keepdims=True), sr, 22050), 22050, "PCM_16"
    return x, sr, None


def _render_job(job: Job, out_dir: str, sr: int) -> dict:
    """Render and write one file; returns its truth entry (runs in a worker process)."""
    x, sections = render_track(job.spec, sr)
    x, file_sr, subtype = _bad_transform(job, x, sr)
    path = Path(out_dir) / job.file
    if job.kind == "truncated":
        with tempfile.TemporaryDirectory() as tmp:
            whole = Path(tmp) / job.file
            audio.write(whole, x, file_sr)
            atomic_write_bytes(path, whole.read_bytes()[:TRUNCATE_AT_BYTES])
    else:
        audio.write(path, x, file_sr, subtype=subtype)
    return _truth(job, sections, x.shape[-1] / file_sr)


def _truth(job: Job, sections: list[dict], duration_s: float) -> dict:
    sp = job.spec
    return {"file": job.file, "bpm": sp.bpm, "key": sp.tonic, "mode": sp.mode, "keyscale": f"{sp.tonic} {sp.mode}",
            "timesignature": str(sp.beats_per_bar), "style_id": sp.style_id, "sections": sections,
            "kind": job.kind, "duration_s": round(duration_s, 4)}


def _duplicate(source: Job, source_truth: dict, out_dir: Path, gain_db: float,
               trim_s: float) -> tuple[Job, dict]:
    """Re-encode a written good track to MP3 with a gain change and its start trimmed (a near-duplicate)."""
    x, file_sr = audio.read(out_dir / source.file)
    k = int(round(trim_s * file_sr))
    y = x[:, k:] * 10 ** (gain_db / 20)
    job = Job(replace(source.spec, track_id=f"dup_{source.spec.track_id}"), "duplicate", "mp3", source.style_ids)
    audio.write(out_dir / job.file, y, file_sr)
    shift = k / file_sr
    sections = [{"start": round(max(0.0, s["start"] - shift), 4), "end": round(s["end"] - shift, 4), "type": s["type"]}
                for s in source_truth["sections"] if s["end"] - shift > 0]
    truth = _truth(job, sections, y.shape[-1] / file_sr)
    truth["duplicate_of"] = source.spec.track_id
    return job, truth


def generate_corpus(cfg: Any) -> dict:
    """Write the corpus and its metadata; returns headline numbers (files, seconds of audio, bytes, time)."""
    t0 = time.perf_counter()
    s = require(cfg, "synth")
    sr = int(s.sample_rate)
    jobs = plan_corpus(cfg)
    audio_root, meta_root = Path(require(cfg, "paths.synth")), Path(require(cfg, "paths.synth_metadata"))
    workers = max(1, min(int(s["workers"]), os.cpu_count() or 1, len(jobs)))
    with atomic_dir(audio_root) as out_dir, atomic_dir(meta_root) as meta_dir:
        truths = _render_all(jobs, out_dir, sr, workers)
        if s.duplicates:
            source = next((j for j in jobs if j.kind == "good" and j.fmt != "mp3"), None)
            if source is None:
                log.warning("synth.duplicates: no good non-mp3 track to duplicate (n_tracks=%s)", s.n_tracks)
            else:
                job, truth = _duplicate(source, truths[source.spec.track_id], out_dir,
                                        float(s["duplicate_gain_db"]), float(s["duplicate_trim_s"]))
                jobs.append(job)
                truths[job.spec.track_id] = truth
        _write_metadata(jobs, truths, meta_dir, int(require(cfg, "seed")))
        n_bytes = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    seconds = sum(t["duration_s"] for t in truths.values())
    result = {"files": len(jobs), "good": sum(j.kind in ("good", "long") for j in jobs),
              "audio_s": round(seconds, 1),
              "bytes": n_bytes, "elapsed_s": round(time.perf_counter() - t0, 2)}
    log.info("synth corpus: %s", result)
    return result


def _render_all(jobs: list[Job], out_dir: Path, sr: int, workers: int) -> dict[str, dict]:
    truths: dict[str, dict] = {}
    if workers == 1:
        for job in tqdm(jobs, desc="synth", unit="file"):
            truths[job.spec.track_id] = _render_job(job, str(out_dir), sr)
        return truths
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    # Longest first, so the pool does not end waiting on one long track.
    order = sorted(jobs, key=lambda j: -j.spec.seconds)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {j.spec.track_id: pool.submit(_render_job, j, str(out_dir), sr) for j in order}
        for tid in tqdm([j.spec.track_id for j in order], desc="synth", unit="file"):
            truths[tid] = futures[tid].result()
    return {j.spec.track_id: truths[j.spec.track_id] for j in jobs}


NOTES = {
    "long": "longer than one training clip (exercises segmentation)",
    "clipped": "deliberately hard-clipped (test data for the quality gate)",
    "silent": "deliberately near-silent (test data for the quality gate)",
    "mono_22k": "deliberately mono at 22.05 kHz (test data for conversion)",
    "truncated": "deliberately truncated inside the FLAC header: cannot be decoded",
}


def _write_metadata(jobs: list[Job], truths: dict[str, dict], meta_dir: Path, seed: int) -> None:
    """sources.json (licensed files only), style_mapping.json (the same tracks) and truth.json (every file)."""
    sources = {}
    for j in jobs:
        if not j.licensed:
            continue
        entry = {"file": j.file, "licence": "generated",
                 "provenance": (f"procedurally synthesised by lofi_lora.synth (seed {seed}, track seed {j.spec.seed}, "
                                f"style {j.spec.style_id}); no samples or recordings used"),
                 "attribution": ATTRIBUTION}
        if j.kind == "duplicate":
            entry["notes"] = f"near-duplicate of {truths[j.spec.track_id]['duplicate_of']} (re-encoded, gain, trimmed)"
        elif j.kind in NOTES:
            entry["notes"] = NOTES[j.kind]
        sources[j.spec.track_id] = entry
    atomic_write_json(meta_dir / "sources.json", {"version": 1, "tracks": sources})
    # A style for a track without a licence entry is an inconsistency metadata.load_style_mapping rejects.
    atomic_write_json(meta_dir / "style_mapping.json",
                      {"version": 1, "tracks": {j.spec.track_id: list(j.style_ids) for j in jobs if j.licensed}})
    atomic_write_json(meta_dir / "truth.json",
                      {"version": 1, "tracks": {j.spec.track_id: truths[j.spec.track_id] for j in jobs}})
