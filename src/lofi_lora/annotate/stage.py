"""Stage `annotate`: every clip of clips.json -> ACE-Step 1.5 sidecar + v1 pair, plus a repetition audit.

Clips are analysed in parallel (tempo, key, meter, events); the clips of each track are then combined into
one tempo and one key or key change (`track.py`; the style's tempo range only breaks near-ties, and BPM/key
given in sources.json win), captions are composed in the main process, the external annotator (if enabled) is asked per clip
through its cache, and the annotations folder is swapped in whole. metrics/annotate.json gets BPM/key
coverage, confidences, the caption audit, speed and, when the corpus has ground truth (truth.json in the
metadata folder), BPM Acc1 and the MIREX key score of the clips.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lofi_lora.data import audio as audio_io
from lofi_lora.annotate.analysis import AnalysisOptions, ClipAnalysis, analyze
from lofi_lora.annotate.audit import audit_captions
from lofi_lora.annotate.captions import compose_caption, compose_tags
from lofi_lora.annotate.external import ExternalAnnotator, clean_rich_text, fold_into_caption
from lofi_lora.annotate.scoring import bpm_acc1, mirex_key_score
from lofi_lora.annotate.sidecar import write_sidecars
from lofi_lora.annotate.track import KEY_CLOSE, ClipVerdict, TrackAnalysis, analyse_track
from lofi_lora.core.config import require, to_plain
from lofi_lora.core.errors import DataError
from lofi_lora.core.parallel import map_processes
from lofi_lora.core.fsutil import atomic_dir, read_json
from lofi_lora.data.metadata import load_metadata
from lofi_lora.data.presets import PresetLibrary

log = logging.getLogger(__name__)


def load_clips(clips_dir: Path) -> list[dict[str, Any]]:
    """clips.json entries, checked for the keys annotate needs."""
    path = clips_dir / "clips.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; run stage preprocess first")
    doc = read_json(path)
    clips = doc.get("clips") if isinstance(doc, dict) else None
    if not isinstance(clips, list):
        raise DataError(f"{path}: expected {{\"clips\": [...]}}")
    seen: set[str] = set()
    for i, c in enumerate(clips):
        for key in ("clip_id", "track_id", "wav"):
            if not isinstance(c, dict) or not isinstance(c.get(key), str) or not c[key]:
                raise DataError(f"{path}: clips[{i}].{key}: missing or not a string")
        if c["clip_id"] in seen:
            raise DataError(f"{path}: clips[{i}].clip_id: duplicate id {c['clip_id']}")
        seen.add(c["clip_id"])
    return clips


def _wav_path(clip: dict[str, Any], clips_dir: Path) -> Path:
    p = Path(clip["wav"])
    if p.is_file():
        return p
    alt = clips_dir / "wav" / f"{clip['clip_id']}.wav"
    if alt.is_file():
        return alt
    raise DataError(f"{clips_dir / 'clips.json'}: clip {clip['clip_id']}: audio file {clip['wav']} not found")


def _analyse_clip(job: tuple[str, str, AnalysisOptions]) -> tuple[str, ClipAnalysis, float]:
    clip_id, wav, opts = job
    c0 = time.process_time()
    audio, sr = audio_io.read(wav)
    return clip_id, analyze(audio, sr, opts), time.process_time() - c0


def analyse_clips(jobs: list[tuple[str, str, AnalysisOptions]], workers: int
                  ) -> tuple[dict[str, ClipAnalysis], float]:
    """clip_id -> analysis, and the CPU seconds spent; parallel over clips when `workers` > 1."""
    results = map_processes(_analyse_clip, jobs, workers, desc="annotate", unit="clip")
    return {cid: a for cid, a, _ in results}, sum(c for _, _, c in results)


def build_sidecar(clip: dict[str, Any], a: ClipAnalysis, track: TrackAnalysis, verdict: ClipVerdict,
                  presets: list[dict[str, Any]], acfg: Any, wav: Path) -> tuple[dict[str, Any], str]:
    """The sidecar document and the v1 tag prompt of one clip (before any external annotator text)."""
    bpm = int(round(track.bpm))
    keyscale = verdict.keyscale
    ts = str(a.beats_per_bar) if bool(acfg["estimate_timesignature"]) else str(acfg.timesignature)
    caption = compose_caption(clip["clip_id"], presets, bpm, keyscale, ts, str(acfg.artist), a.events,
                              bool(acfg.event_captions), int(acfg.max_caption_chars))
    details = {
        "bpm_estimate": round(float(track.bpm), 2), "bpm_source": track.bpm_source,
        "bpm_confidence": verdict.tempo_confidence, "track_bpm_confidence": track.bpm_confidence,
        "bpm_audio": None if track.bpm_audio is None else round(float(track.bpm_audio), 2),
        "clip_bpm": round(float(a.own_bpm), 2), "key_source": track.key_source,
        "key_confidence": verdict.key_confidence, "clip_key": a.key.keyscale, "key_change": track.key_change,
        "flags": verdict.flags, "tempo_octave": None if track.octave is None else asdict(track.octave),
        "key_margin": None if track.key_source != "audio" else round(track.key_segments[0].key.confidence, 3),
        "beats_per_bar_estimate": int(a.beats_per_bar),
        "meter_confidence": round(float(a.meter_confidence), 3),
        "tempo_range_prior": list(_union_range(presets)), "preset_names": [p["name"] for p in presets]}
    doc = {
        "caption": caption,
        "lyrics": str(acfg.instrumental_lyrics),
        "bpm": bpm,
        "keyscale": keyscale,
        "timesignature": ts,
        "vocal_language": str(acfg.vocal_language),
        "duration": round(float(a.duration_s), 3),
        "artist": str(acfg.artist),
        "events": [e.to_json() for e in a.events],
        "style_ids": [p["id"] for p in presets],
        "track_id": clip["track_id"],
        "clip_id": clip["clip_id"],
        "source": {"audio": wav.as_posix(), "start_s": clip.get("start_s"), "end_s": clip.get("end_s"),
                   "rich_details": details},
    }
    return doc, compose_tags(presets, bpm, keyscale)


def _union_range(presets: list[dict[str, Any]]) -> tuple[float, float]:
    return float(min(p["tempo_range"][0] for p in presets)), float(max(p["tempo_range"][1] for p in presets))


def _truth_scores(metadata_dir: Path, docs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """BPM Acc1 and MIREX key score of the clips whose track has ground truth (the synthetic corpus)."""
    path = metadata_dir / "truth.json"
    if not path.is_file():
        return None
    truth = (read_json(path) or {}).get("tracks", {})
    acc, keys = [], []
    for doc in docs.values():
        t = truth.get(doc["track_id"])
        if not t or t.get("bpm") is None or not t.get("keyscale"):
            continue
        acc.append(bpm_acc1(doc["source"]["rich_details"]["bpm_estimate"], float(t["bpm"])))
        keys.append(mirex_key_score(doc["keyscale"], t["keyscale"]))
    if not acc:
        return None
    return {"clips_with_truth": len(acc), "bpm_acc1": round(float(np.mean(acc)), 4),
            "key_mirex": round(float(np.mean(keys)), 4), "key_exact": round(float(np.mean(np.array(keys) == 1.0)), 4)}


def analyse_tracks(clips: list[dict[str, Any]], analyses: dict[str, ClipAnalysis],
                   presets_of: dict[str, list[dict[str, Any]]], sources: dict[str, dict[str, Any]],
                   opts: AnalysisOptions) -> tuple[dict[str, TrackAnalysis], dict[str, ClipVerdict]]:
    """Track-level tempo and key from each track's clips in playing order; BPM/key from sources.json win."""
    by_track: dict[str, list[dict[str, Any]]] = {}
    for clip in clips:
        by_track.setdefault(clip["track_id"], []).append(clip)
    tracks, verdicts = {}, {}
    for tid, members in by_track.items():
        members.sort(key=lambda c: float(c.get("start_s") or 0.0))
        given = sources.get(tid, {})
        t = analyse_track([analyses[c["clip_id"]] for c in members], opts,
                          _union_range(presets_of[members[0]["clip_id"]]), given.get("bpm"), given.get("keyscale"))
        tracks[tid] = t
        verdicts.update({c["clip_id"]: v for c, v in zip(members, t.clips)})
    return tracks, verdicts


def run_annotate(cfg: Any) -> dict[str, Any]:
    """Annotate every clip; returns headline numbers."""
    acfg = require(cfg, "annotate")
    clips_dir = Path(require(cfg, "paths.clips"))
    out_dir = Path(require(cfg, "paths.annotations"))
    metrics_path = Path(require(cfg, "paths.metrics")) / "annotate.json"
    metadata_dir = Path(require(cfg, "data.metadata_dir"))
    library = PresetLibrary(require(cfg, "paths.presets"))
    meta = load_metadata(metadata_dir, library)
    clips = load_clips(clips_dir)
    opts = AnalysisOptions.from_cfg(acfg)
    workers = int(acfg["workers"]) or (os.cpu_count() or 1)
    log.info("annotate: %d clips from %s, %d presets, key profile %s, %d worker(s), event captions %s",
             len(clips), clips_dir, len(library.ids()), opts.key_profile, workers, bool(acfg.event_captions))

    presets_of: dict[str, list[dict[str, Any]]] = {}
    jobs = []
    wavs: dict[str, Path] = {}
    for clip in clips:
        ids = meta.styles_of(clip["track_id"], str(metadata_dir / "style_mapping.json"))
        presets_of[clip["clip_id"]] = [library[i] for i in ids]
        wavs[clip["clip_id"]] = _wav_path(clip, clips_dir)
        jobs.append((clip["clip_id"], str(wavs[clip["clip_id"]]), opts))

    t0 = time.perf_counter()
    analyses, cpu_s = analyse_clips(jobs, workers)
    tracks, verdicts = analyse_tracks(clips, analyses, presets_of, meta.sources, opts)
    analysis_wall_s = time.perf_counter() - t0

    ext_cfg = to_plain(acfg.external)
    Path(require(cfg, "paths.annotator_cache")).mkdir(parents=True, exist_ok=True)  # a DVC output, even when unused
    annotator = ExternalAnnotator(ext_cfg, require(cfg, "paths.annotator_cache")) if ext_cfg.get("enabled") else None
    docs: dict[str, dict[str, Any]] = {}
    prompts: dict[str, str] = {}
    for clip in clips:
        cid = clip["clip_id"]
        doc, prompt = build_sidecar(clip, analyses[cid], tracks[clip["track_id"]], verdicts[cid], presets_of[cid],
                                    acfg, wavs[cid])
        if annotator is not None:
            reply = annotator.annotate(cid, wavs[cid], {"bpm": doc["bpm"], "keyscale": doc["keyscale"],
                                                        "style_ids": doc["style_ids"]})
            rich = clean_rich_text(reply["text"], int(ext_cfg["max_rich_chars"]))
            doc["caption"] = fold_into_caption(doc["caption"], rich, int(acfg.max_caption_chars))
            doc["source"]["rich_details"]["external"] = {"text": reply["text"], "cleaned": rich,
                                                         "audio_sha256": reply["audio_sha256"],
                                                         "annotator": reply["annotator"], "cached": reply["cached"]}
        docs[cid], prompts[cid] = doc, prompt

    with atomic_dir(out_dir) as tmp:
        for cid, doc in docs.items():
            write_sidecars(tmp, doc, prompts[cid])

    audio_s = float(sum(a.duration_s for a in analyses.values()))
    audit = audit_captions({c: d["caption"] for c, d in docs.items()}, int(acfg["audit_ngram"]),
                           str(acfg.artist))
    n = max(len(docs), 1)
    metrics = {
        "clips": len(docs),
        "tracks": len({d["track_id"] for d in docs.values()}),
        "bpm_coverage": round(sum(d["bpm"] is not None for d in docs.values()) / n, 4),
        "key_coverage": round(sum(d["keyscale"] is not None for d in docs.values()) / n, 4),
        "mean_bpm_confidence": round(float(np.mean([v.tempo_confidence for v in verdicts.values()] or [0])), 4),
        "mean_key_confidence": round(float(np.mean([v.key_confidence for v in verdicts.values()] or [0])), 4),
        "one_key_per_track": round(float(np.mean([len({v.keyscale for v in t.clips}) == 1
                                                   for t in tracks.values()] or [1])), 4),
        "bpm_sources": dict(Counter(t.bpm_source for t in tracks.values())),
        "key_changes": {tid: t.key_change for tid, t in tracks.items() if t.key_change},
        "tempo_octave_close": sorted(tid for tid, t in tracks.items() if t.octave is not None and t.octave.close),
        "tempo_octave_folded": sorted(tid for tid, t in tracks.items() if t.bpm_source == "range"),
        "key_close": sorted(tid for tid, t in tracks.items()
                            if t.key_source == "audio" and t.key_segments[0].key.confidence < KEY_CLOSE),
        "flagged_clips": {cid: v.flags for cid, v in verdicts.items() if v.flags},
        "events_per_clip": round(sum(len(d["events"]) for d in docs.values()) / n, 3),
        "event_types": dict(Counter(e["type"] for d in docs.values() for e in d["events"])),
        "event_captions": bool(acfg.event_captions),
        "caption_audit": audit,
        "audio_s": round(audio_s, 2),
        "analysis_wall_s": round(analysis_wall_s, 3),
        "x_realtime": round(audio_s / analysis_wall_s, 1) if analysis_wall_s > 0 else None,
        "x_realtime_per_core": round(audio_s / cpu_s, 1) if cpu_s > 0 else None,
        "workers": workers,
        "external": {"enabled": annotator is not None,
                     "requests": annotator.requests if annotator else 0,
                     "cache_hits": annotator.cache_hits if annotator else 0},
    }
    truth = _truth_scores(metadata_dir, docs)
    if truth is not None:
        metrics["truth"] = truth
    from lofi_lora.core.results import write_stage_metrics

    write_stage_metrics("annotate", metrics_path, metrics)
    log.info("annotate: %d sidecars in %s, %.0fx realtime, caption n-gram reuse %.2f, %d duplicate groups",
             len(docs), out_dir, metrics["x_realtime"] or 0, audit["shared_ngram_ratio"],
             len(audit["exact_duplicate_groups"]))
    summary = {k: metrics[k] for k in ("clips", "bpm_coverage", "key_coverage", "x_realtime")}
    summary["shared_ngram_ratio"] = audit["shared_ngram_ratio"]
    if truth is not None:
        summary.update(bpm_acc1=truth["bpm_acc1"], key_mirex=truth["key_mirex"])
    return summary
