"""Stage `preprocess`: accepted tracks -> quality-checked, loudness-normalised 48 kHz stereo clips.

Tracks that fail a quality check are quarantined with a reason. Long tracks are cut near bar lines at
the quietest point that is not inside a note onset, so no clip starts or ends mid-attack. Each clip is
normalised to audio.target_lufs under the audio.true_peak_dbfs ceiling and written as WAV (PCM_24) and
MP3. Human quality scores in quality_scores.json survive reruns; automated ones are replaced.
"""
from __future__ import annotations

import functools
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lofi_lora.data import audio as audio_io
from lofi_lora.data import quality, trackscan
from lofi_lora.data.accounting import considered, failure
from lofi_lora.core.config import require, to_plain
from lofi_lora.core.errors import ConfigError, DataError
from lofi_lora.core.fsutil import atomic_dir, atomic_write_json, is_safe_name, path_inside, read_json
from lofi_lora.core.parallel import map_processes

log = logging.getLogger(__name__)

ANALYSIS_SR = 22050
HOP = 512
FADE_S = 0.005
SCORES_VERSION = 1


# ---------------------------------------------------------------------------------------------- segmenting
def analyse(audio: np.ndarray, sample_rate: int, start_bpm: float = 85.0, beats_per_bar: int = 4) -> dict[str, np.ndarray]:
    """Beat, onset and energy curves (frames of HOP samples at ANALYSIS_SR) that choose the cut points.

    `start_bpm` is the beat tracker's tempo prior (librosa's default of 120 doubles many lofi tempi). Downbeats
    are the beat phase with the strongest accents, bass-band hits and harmony changes (accent, kick, chord change).
    """
    from lofi_lora.core.librosa_guard import load
    librosa = load()

    mono = audio_io.resample(audio_io.to_channels(audio, 1), sample_rate, ANALYSIS_SR)[0].astype(np.float32)
    power = np.abs(librosa.stft(mono, n_fft=2048, hop_length=HOP)) ** 2
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=ANALYSIS_SR, n_mels=64))
    env = librosa.onset.onset_strength(S=mel_db, sr=ANALYSIS_SR)
    bass = librosa.onset.onset_strength(S=mel_db[:6], sr=ANALYSIS_SR)  # < ~200 Hz: kick and bass
    chroma = librosa.feature.chroma_stft(S=power, sr=ANALYSIS_SR)
    flux = np.r_[0.0, np.sqrt((np.clip(np.diff(chroma, axis=1), 0, None) ** 2).sum(axis=0))]
    rms = librosa.feature.rms(y=mono, frame_length=2 * HOP, hop_length=HOP)[0]  # short: sharp before attacks
    n = min(env.size, rms.size, bass.size, flux.size)
    env, rms, bass, flux = env[:n], rms[:n], bass[:n], flux[:n]
    _, beats = librosa.beat.beat_track(onset_envelope=env, sr=ANALYSIS_SR, hop_length=HOP, start_bpm=start_bpm,
                                       units="frames")
    peaks = librosa.onset.onset_detect(onset_envelope=env, sr=ANALYSIS_SR, hop_length=HOP, units="frames")
    starts = librosa.onset.onset_backtrack(peaks, rms) if peaks.size else peaks
    forbidden = np.zeros(n, bool)
    for s, p in zip(starts, peaks):  # from just before the attack starts until just after its peak
        forbidden[max(0, s - 1): min(n, p + 3)] = True
    beats = np.asarray(beats, int)
    bars = beats
    if beats.size >= 2 * beats_per_bar:
        downbeat = sum(c / (np.percentile(c, 99) + 1e-9) for c in (env, bass, flux))
        near = np.array([downbeat[max(0, b - 2): b + 3].max() for b in beats])
        phase = int(np.argmax([near[k::beats_per_bar].mean() for k in range(beats_per_bar)]))
        bars = beats[phase::beats_per_bar]
    return {"env": env, "rms": rms, "forbidden": forbidden, "bars": bars, "beats": beats, "onsets": peaks,
            "onset_starts": starts}


def choose_cuts(curves: dict[str, np.ndarray], duration_s: float, max_clip_s: float, min_clip_s: float) -> list[float]:
    """Clip boundaries in seconds `[0, c1, ..., duration_s]`, each clip at most max_clip_s long.

    Each cut is searched near the bar lines in the last half of the allowed span, at the frame of lowest
    energy + onset strength that is not inside an onset; a later cut is slightly preferred (fewer, longer
    clips), and the remainder is kept at least min_clip_s long where the lengths allow.
    """
    if duration_s <= max_clip_s:
        return [0.0, duration_s]
    fps = ANALYSIS_SR / HOP
    env, rms, forbidden, bars = curves["env"], curves["rms"], curves["forbidden"], curves["bars"]
    n = env.size
    cost = rms / (np.percentile(rms, 95) + 1e-9) + env / (np.percentile(env, 95) + 1e-9)
    beats = curves.get("beats", bars)
    beat_frames = float(np.median(np.diff(beats))) if beats.size > 1 else fps / 2
    cuts, start = [0.0], 0.0
    while duration_s - start > max_clip_s:
        hi_s = start + max_clip_s
        if duration_s - hi_s < min_clip_s and duration_s - start - min_clip_s >= max(min_clip_s, 0.5 * max_clip_s):
            hi_s = duration_s - min_clip_s  # leave a usable last clip
        lo_s = max(start + min_clip_s, start + 0.5 * max_clip_s)
        hi = min(n - 1, int(np.floor(hi_s * fps)))
        lo = min(int(np.ceil(lo_s * fps)), hi)
        best: tuple[float, int] | None = None
        w = max(1, int(beat_frames / 2))
        for b in bars[(bars >= lo - w) & (bars <= hi + w)]:
            cand = np.arange(max(lo, b - w), min(hi, b + w) + 1)
            cand = cand[~forbidden[cand]]
            if cand.size == 0:
                continue
            c = cost[cand] + 0.25 * np.abs(cand - b) / w - 0.25 * (cand / fps - start) / max_clip_s
            k = int(np.argmin(c))
            if best is None or c[k] < best[0]:
                best = (float(c[k]), int(cand[k]))
        if best is None:  # no beat grid here: anywhere in the span that is not inside an onset
            cand = np.arange(lo, hi + 1)
            free = cand[~forbidden[cand]]
            if free.size:
                best = (0.0, int(free[np.argmin(cost[free])]))
            else:
                log.warning("no onset-free frame between %.1f and %.1f s; cutting at the weakest onset", lo_s, hi_s)
                best = (0.0, int(cand[np.argmin(env[cand])]))
        cut = best[1] / fps
        cuts.append(cut)
        start = cut
    cuts.append(duration_s)
    return cuts


def _fade_edges(clip: np.ndarray, sample_rate: int, fade_in: bool, fade_out: bool) -> np.ndarray:
    """Short raised-cosine fades at cut edges so a cut at a quiet point never clicks."""
    n = min(int(FADE_S * sample_rate), clip.shape[1] // 2)
    if n < 2:
        return clip
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n))).astype(clip.dtype)
    clip = clip.copy()
    if fade_in:
        clip[:, :n] *= ramp
    if fade_out:
        clip[:, -n:] *= ramp[::-1]
    return clip


# ---------------------------------------------------------------------------------------------- per track
class _WriteFailed(Exception):
    """Writing an output clip failed: the stage's problem, not the track's (process_track re-raises the cause)."""


def process_track(track: dict[str, Any], params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Check, segment, normalise and write one accepted track (or part of a long file). Returns clips, quarantine
    entries, scores; any failure reading or measuring it is this track's: it is quarantined with the file and the
    reason. A failure writing the clips (a full disk) is not the track's: it stops the stage, whose outputs stay as
    they were."""
    try:
        return _process_track(track, params, out_dir)
    except _WriteFailed as e:
        raise e.__cause__ from None
    except Exception as e:
        reason = "undecodable" if isinstance(e, (DataError, OSError)) else "processing_error"
        return {"clips": [], "scores": {}, "short_clips_dropped": 0, "quarantine": [{
            "path": Path(track["path"]).as_posix(), "track_id": track["track_id"], "reason": reason,
            "detail": str(e) if reason == "undecodable" else failure(track["path"], "preprocess", e),
            "reasons": [reason], "measures": {}}]}


def _process_track(track: dict[str, Any], params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    tid, path = track["track_id"], Path(track["path"])
    result: dict[str, Any] = {"clips": [], "quarantine": [], "scores": {}, "short_clips_dropped": 0}

    def quarantine(reasons: list[tuple[str, str]], measures: dict, clip_id: str | None = None) -> dict[str, Any]:
        entry = {"path": path.as_posix(), "track_id": tid, "reason": reasons[0][0], "detail": reasons[0][1],
                 "reasons": [r for r, _ in reasons], "measures": measures}
        if clip_id:
            entry["clip_id"] = clip_id
        result["quarantine"].append(entry)
        return result

    if not is_safe_name(tid):  # ingest refuses these; checked again because clip files are named after it
        return quarantine([("bad_metadata", f"track id {tid!r} is not a safe file name")], {})
    sr = int(params["sample_rate"])
    part = "part" in track
    start = stop = None
    if part:  # a part of a long file (ingest): its frames at the file's rate
        start, stop = round(track["start_s"] * track["sample_rate"]), round(track["end_s"] * track["sample_rate"])
    try:
        s = trackscan.scan(path, start or 0, stop, silence_db=float(params["silence_db"]),
                           conform=(sr, int(params["channels"])))
    except DataError as e:
        return quarantine([("undecodable", str(e))], {})
    m = s.measures
    problems = quality.check(m, params)
    if problems:
        return quarantine(problems, m.as_dict())
    native_sr, x = s.sample_rate, s.conformed
    del s
    duration_s = x.shape[1] / sr
    curves = analyse(x, sr, float(params.get("beat_start_bpm", 85.0)), int(params.get("beats_per_bar", 4)))
    cuts = choose_cuts(curves, duration_s, float(params["max_clip_s"]), float(params["min_clip_s"]))
    k = 0
    for i, (a_s, b_s) in enumerate(zip(cuts[:-1], cuts[1:])):
        a, b = int(round(a_s * sr)), min(x.shape[1], int(round(b_s * sr)))
        if (b - a) / sr < float(params["min_clip_s"]):
            result["short_clips_dropped"] += 1
            continue
        clip_id = f"{tid}__p{track['part']:03d}_{k:03d}" if part else f"{tid}__{k:03d}"
        inner_end = part and track["part"] < track["parts"] - 1  # a part's end is a cut in the file
        clip = _fade_edges(x[:, a:b], sr, fade_in=i > 0 or bool(start), fade_out=i < len(cuts) - 2 or inner_end)
        cm = quality.measure(clip, sr, native_sr, float(params["silence_db"]))
        clip_problems = [p for p in quality.check(cm, params) if p[0] in ("silence", "too_quiet")]
        if clip_problems:
            quarantine(clip_problems, cm.as_dict(), clip_id)
            k += 1
            continue
        norm = quality.normalise(clip, sr, float(params["target_lufs"]), float(params["true_peak_dbfs"]))
        wav, mp3 = path_inside(out_dir / "wav", f"{clip_id}.wav"), path_inside(out_dir / "mp3", f"{clip_id}.mp3")
        try:
            audio_io.write(wav, norm.audio, sr, subtype="PCM_24")
            audio_io.write(mp3, norm.audio, sr, bitrate_kbps=int(params["mp3_bitrate_kbps"]))
        except Exception as e:
            raise _WriteFailed() from e
        result["clips"].append({
            "clip_id": clip_id, "track_id": tid, "wav": wav.name, "mp3": mp3.name,
            "start_s": round(a / sr, 4), "end_s": round(b / sr, 4), "duration_s": round((b - a) / sr, 4),
            "lufs": round(norm.lufs, 3), "true_peak_dbfs": round(norm.true_peak_dbfs, 3)})
        result["scores"][clip_id] = {
            **cm.as_dict(), "score": round(quality.score(cm, params), 4), "gain_db": round(norm.gain_db, 3),
            "lufs_normalised": round(norm.lufs, 3), "true_peak_dbfs": round(norm.true_peak_dbfs, 3),
            "scorer_version": quality.SCORER_VERSION}
        k += 1
    return result


# ---------------------------------------------------------------------------------------------- stage
def merge_scores(existing: Any, automated: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """New quality_scores.json content: automated scores replaced, every `human` entry kept (also of clips
    that no longer exist, which are marked `current: false`)."""
    old_clips = existing.get("clips", {}) if isinstance(existing, dict) else {}
    clips: dict[str, Any] = {}
    for clip_id in sorted(set(old_clips) | set(automated)):
        entry: dict[str, Any] = {"current": clip_id in automated}
        if clip_id in automated:
            entry["automated"] = automated[clip_id]
        human = (old_clips.get(clip_id) or {}).get("human")
        if human is not None:
            entry["human"] = human
        if entry["current"] or "human" in entry:
            clips[clip_id] = entry
    return {"version": SCORES_VERSION, "scorer_version": quality.SCORER_VERSION, "clips": clips}


def _remove_stale_temps(path: Path) -> None:
    """Temp folders/files a killed earlier run left beside `path` (the atomic writers' naming)."""
    if path.parent.is_dir():
        for p in path.parent.glob(f".{path.name}.*"):
            if p.name.endswith(".tmp") or p.name == f".{path.name}.old":
                log.info("removing leftover %s of an interrupted run", p)
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def preprocess(interim_dir: Path, clips_dir: Path, scores_path: Path, metrics_path: Path,
               params: dict[str, Any]) -> dict[str, Any]:
    """Run the stage on paths.interim's accepted tracks; returns the data metrics."""
    t0 = time.perf_counter()
    if not 0 < float(params["min_clip_s"]) <= float(params["max_clip_s"]):
        raise ConfigError(f"audio.min_clip_s={params['min_clip_s']} must be > 0 and <= "
                          f"audio.max_clip_s={params['max_clip_s']}")
    if not (interim_dir / "ingest.json").is_file():
        raise DataError(f"{interim_dir / 'ingest.json'} not found: run stage ingest first (python stages/ingest.py)")
    ingest_doc = read_json(interim_dir / "ingest.json")
    ingest_q = read_json(interim_dir / "quarantine.json") if (interim_dir / "quarantine.json").exists() else {}
    tracks = ingest_doc.get("accepted", [])
    _remove_stale_temps(clips_dir)
    with atomic_dir(clips_dir) as tmp:
        (tmp / "wav").mkdir()
        (tmp / "mp3").mkdir()
        work = functools.partial(process_track, params=params, out_dir=tmp)
        # tracks are independent; each worker writes its own clip files
        results = map_processes(work, tracks, int(params["workers"]), desc="preprocess", unit="track")
        for r in results:
            for c in r["clips"]:  # repo-relative paths where the clips will be once the folder is swapped in
                c["wav"], c["mp3"] = (clips_dir / "wav" / c["wav"]).as_posix(), (clips_dir / "mp3" / c["mp3"]).as_posix()
        clips = [c for r in results for c in r["clips"]]
        quarantined = sorted((q for r in results for q in r["quarantine"]),
                             key=lambda q: (q["path"], q.get("clip_id", "")))
        atomic_write_json(tmp / "clips.json", {"version": 1, "sample_rate": int(params["sample_rate"]), "clips": clips})
        atomic_write_json(tmp / "quarantine.json", {"quarantined": quarantined})
    existing = read_json(scores_path) if scores_path.exists() else {}
    atomic_write_json(scores_path, merge_scores(existing, {k: v for r in results for k, v in r["scores"].items()}))

    ingest_reasons = Counter(q["reason"] for q in ingest_q.get("quarantined", []))
    pre_reasons = Counter(q["reason"] for q in quarantined)
    metrics = {
        "tracks_in": considered(ingest_doc, ingest_q),
        "tracks_accepted_ingest": len(tracks),
        "tracks_with_clips": len({c["track_id"] for c in clips}),
        "duplicates": len(ingest_doc.get("duplicates", [])),
        "quarantined": {"ingest": dict(sorted(ingest_reasons.items())), "preprocess": dict(sorted(pre_reasons.items())),
                        "total": sum(ingest_reasons.values()) + sum(pre_reasons.values())},
        "clips_out": len(clips),
        "short_clips_dropped": sum(r["short_clips_dropped"] for r in results),
        "hours_in": round(sum(t["duration_s"] for t in tracks) / 3600, 5),
        "hours_out": round(sum(c["duration_s"] for c in clips) / 3600, 5),
        "clip_lufs_mean": round(float(np.mean([c["lufs"] for c in clips])), 3) if clips else None,
        "clip_true_peak_max_dbfs": round(max(c["true_peak_dbfs"] for c in clips), 3) if clips else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    from lofi_lora.core.results import write_stage_metrics

    write_stage_metrics("data", metrics_path, metrics)
    log.info("preprocess: %d tracks -> %d clips (%.3f h); quarantined %s", len(tracks), len(clips),
             metrics["hours_out"], metrics["quarantined"])
    return metrics


def run_preprocess(cfg) -> dict[str, Any]:
    """Stage entry: paths.interim -> paths.clips, audio.quality_scores, paths.metrics/data.json."""
    params = to_plain(require(cfg, "audio"))
    m = preprocess(Path(require(cfg, "paths.interim")), Path(require(cfg, "paths.clips")),
                   Path(require(cfg, "audio.quality_scores")), Path(require(cfg, "paths.metrics")) / "data.json", params)
    return {k: v for k, v in m.items() if not isinstance(v, dict)} | {"quarantined": m["quarantined"]["total"]}
