"""What a stage reports: a few headline figures (DVC metrics), tables of diagnostics (DVC plots), timings (log only).

`metrics/<stage>.json` is `{"<stage>": {...}}` with the figures experiments are compared on, so `dvc exp show`
columns read `eval.val_loss`, `export.int4.cosine`, `dataset.train.clips`. Each is a pure function of the stage's
inputs: a rerun on the same machine writes the same bytes, so a fresh clone's `dvc repro` leaves git clean.
Per-reason, per-style and per-case tables go to `metrics/<stage>/<table>.json` (versioned in git, drawn by
`dvc plots show`, see the top-level `plots:` of dvc.yaml). Wall-clock figures (seconds, throughput, latency) change on
every run: they are logged (Hydra writes the log under `outputs/`), never written to a versioned file.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

from lofi_lora.core.fsutil import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

Split = tuple[dict[str, Any], dict[str, list[dict[str, Any]]], dict[str, Any]]  # headline, tables, timings
SIGNIFICANT = 5  # what `dvc metrics show` prints; another CPU moves these figures in the 7th-8th digit (issue 23)
PARITY_DECIMALS = 6  # parity figures (cosine, rel_l2, errors) below 1e-6 are float noise; export tolerances >= 1e-5


def meaningful(v: Any, decimals: int | None = None) -> Any:
    """A float to the digits that mean something, so a rerun on another CPU mostly writes the same bytes (a value
    near a rounding boundary can still flip its last digit: the tests compare at a tolerance, not by bytes)."""
    if not isinstance(v, float) or not math.isfinite(v):
        return v
    return float(f"{round(v, decimals) if decimals is not None else v:.{SIGNIFICANT}g}")


def _num(v: Any, decimals: int | None = None) -> Any:
    """A JSON number or null (NaN/inf are not JSON), to its meaningful digits."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return meaningful(v, decimals) if math.isfinite(float(v)) else None
    raise TypeError(f"headline metric value {v!r} is not a number")


def _pick(d: dict[str, Any], names: dict[str, str], decimals: int | None = None) -> dict[str, Any]:
    """{new_name: d[old_name]} for the keys present in d."""
    return {new: _num(d[old], decimals) for new, old in names.items() if old in d}


def split_data(m: dict[str, Any]) -> Split:
    q = m.get("quarantined", {})
    head = _pick(m, {"tracks_in": "tracks_in", "tracks_accepted": "tracks_accepted_ingest",
                     "tracks_with_clips": "tracks_with_clips", "duplicates": "duplicates", "clips": "clips_out",
                     "hours": "hours_out", "lufs_mean": "clip_lufs_mean",
                     "true_peak_max_dbfs": "clip_true_peak_max_dbfs"})
    head["quarantined"] = _num(q.get("total", 0))
    rows = [{"stage": st, "reason": r, "tracks": n} for st in ("ingest", "preprocess")
            for r, n in sorted((q.get(st) or {}).items())]
    return head, {"quarantine": rows}, {"seconds": m.get("seconds")}


def split_annotate(m: dict[str, Any]) -> Split:
    audit = m.get("caption_audit") or {}
    head = _pick(m, {"clips": "clips", "bpm_coverage": "bpm_coverage", "key_coverage": "key_coverage",
                     "bpm_confidence": "mean_bpm_confidence", "key_confidence": "mean_key_confidence",
                     "events_per_clip": "events_per_clip"})
    if audit.get("captions"):
        head["caption_unique_ratio"] = round(audit["unique_captions"] / audit["captions"], 4)
        head["caption_shared_ngram_ratio"] = _num(audit.get("shared_ngram_ratio"))
    if "one_key_per_track" in m:  # track-level analysis: one key per track, key changes, clips at odds with their track
        head["one_key_per_track"] = _num(m["one_key_per_track"])
        head["key_changes"] = len(m.get("key_changes") or {})
        head["flagged_clips"] = len(m.get("flagged_clips") or {})
    if m.get("truth"):
        head["truth"] = _pick(m["truth"], {"bpm_acc1": "bpm_acc1", "key_mirex": "key_mirex", "key_exact": "key_exact"})
    tables = {"event_types": [{"event": k, "count": v} for k, v in sorted((m.get("event_types") or {}).items())],
              "shared_ngrams": [dict(r) for r in audit.get("top_shared_ngrams") or []],
              "bpm_sources": [{"source": k, "tracks": v} for k, v in sorted((m.get("bpm_sources") or {}).items())],
              "flagged_clips": [{"clip_id": k, "flags": "; ".join(v)} for k, v in sorted((m.get("flagged_clips") or {}).items())]}
    timings = {k: m.get(k) for k in ("audio_s", "analysis_wall_s", "x_realtime", "x_realtime_per_core", "workers")}
    return head, tables, {**timings, "external": m.get("external")}


def split_dataset(m: dict[str, Any]) -> Split:
    splits = m.get("splits", {})
    head = {s: _pick(v, {"clips": "clips", "tracks": "tracks", "seconds": "seconds"}) for s, v in splits.items()}
    head["repeat_count"] = _num(m.get("repeat_count"))
    styles = [{"style": st, "split": s, "clips": v[s]["clips"], "seconds": v[s]["seconds"]}
              for st, v in sorted((m.get("styles") or {}).items()) for s in sorted(v) if v[s]["clips"]]
    # cache computed/reused depends on what a persisted cache already held: a log line, not a result
    return head, {"styles": styles}, {"cache": m.get("cache")}


TRAIN_TIMINGS = ("steps_per_s", "tokens_per_s", "wall_s", "steps_run", "resumed_from", "device", "world_size", "loop")


def split_train(m: dict[str, Any]) -> Split:
    head = _pick(m, {"loss": "final_loss", "loss_smoothed": "train_loss_smoothed", "grad_norm": "grad_norm",
                     "lr": "lr", "steps": "steps", "trainable_params": "trainable_params", "clips": "clips"})
    return head, {}, {k: m.get(k) for k in TRAIN_TIMINGS}


def _scored(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{id: value} of the records that are scores (a direction; sizes and fit diagnostics stay in the report), with
    `<id>_low`/`<id>_high` where a record has an interval."""
    out: dict[str, Any] = {}
    for r in records:
        if r["direction"]:
            out[r["id"]] = _num(r["value"])
            out.update({f"{r['id']}_{k}": _num(r[k]) for k in ("low", "high") if r.get(k) is not None})
    return out


def split_eval(m: dict[str, Any]) -> Split:
    """The best checkpoint's scored records -> eval.<id>, the base model's -> eval.base.<id>, the anchors' (white noise, real
    training clips) -> eval.noise.<id>, eval.real.<id>, best minus base -> eval.vs_base.<id> (with _low/_high)."""
    recs = m.get("records") or {}
    head: dict[str, Any] = {"best_step": _num(m.get("best_step")), **_scored(recs.get("best", []))}
    head["base"] = _scored(recs.get("base", []))
    for anchor in ("noise", "real"):  # white noise; real training clips: values only (intervals in the report)
        if recs.get(anchor):
            head[anchor] = {r["id"]: _num(r["value"]) for r in recs[anchor] if r["direction"]}
    if m.get("comparison"):  # best minus base, with the paired bootstrap interval of the difference
        head["vs_base"] = {f"{k}{suffix}": _num(c[field]) for k, c in m["comparison"].items()
                           for suffix, field in (("", "delta"), ("_low", "low"), ("_high", "high"))}
    return head, {}, {"seconds": m.get("seconds")}


def split_export(m: dict[str, Any]) -> Split:
    head: dict[str, Any] = {"lora_layers_merged": _num(m.get("lora_layers_merged"))}
    if "merge" in m:
        head["merge"] = _pick(m["merge"], {"cosine": "cosine", "rel_l2": "rel_l2"}, PARITY_DECIMALS)
    if "vae_decoder" in m:
        head["vae"] = _pick(m["vae_decoder"]["parity"], {"cosine": "cosine", "rel_l2": "rel_l2"}, PARITY_DECIMALS)
    rows, latency = [], {"torch_fp32_ms": m.get("torch_fp32_latency_ms")}
    for p, f in (m.get("precisions") or {}).items():
        head[p] = {"passed": f["passed"], **_pick(f["parity"], {"cosine": "cosine", "rel_l2": "rel_l2"}, PARITY_DECIMALS),
                   "size_ratio": _num(f["ratio_to_fp32"]), "mb": _num(f["mb"]),
                   "audio_cosine": _num(f["sampler_audio"]["cosine"], PARITY_DECIMALS)}
        if "parity_sampler_inputs" in f:  # per call on the sampler's own inputs (worst call)
            head[p]["sampler_inputs_rel_l2"] = meaningful(f["parity_sampler_inputs"]["rel_l2"], PARITY_DECIMALS)
            rows.append({"model": f"{p} sampler inputs", "precision": p, "case": "sampler_inputs",
                         **{k: meaningful(v, PARITY_DECIMALS) for k, v in f["parity_sampler_inputs"].items()}})
        for case, figs in f.get("parity_cases", {}).items():
            rows.append({"model": f"{p} {case}", "precision": p, "case": case,
                         **{k: meaningful(v, PARITY_DECIMALS) for k, v in figs.items()}})
        rows.append({"model": f"{p} sampler audio", "precision": p, "case": "sampler_audio",
                     **{k: meaningful(v, PARITY_DECIMALS) for k, v in f["sampler_audio"].items()}})
        latency[f"{p}_ms"] = f.get("latency_ms")
        if p in (m.get("audio_gate") or {}):  # the ONNX sampler's FD to the holdout clips, with its interval
            g = m["audio_gate"][p]
            head[p]["audio_fd"] = _num(g["fd"])
            if p == "fp32":  # the interval the lossy precisions are gated on
                head[p].update(audio_fd_low=_num(g["fd_low"]), audio_fd_high=_num(g["fd_high"]))
            else:  # per-call parity is then a diagnostic: shown, not deciding
                head[p].update(audio_gate_passed=f.get("audio_gate_passed"), parity_passed=f.get("parity_passed"))
    tables: dict[str, Any] = {"parity": rows}
    if m.get("audio_gate"):  # every figure of the audio-level gate, the paired difference from FP32 included
        tables["audio_gate"] = [{"precision": p, **{k: meaningful(v) for k, v in g.items()}}
                                for p, g in m["audio_gate"].items()]
    return head, tables, {"latency": latency, "timing_s": m.get("timing_s")}


SPLITTERS: dict[str, Callable[[dict[str, Any]], Split]] = {
    "data": split_data, "annotate": split_annotate, "dataset": split_dataset, "train": split_train,
    "eval": split_eval, "export": split_export}


def write_stage_metrics(stage: str, metrics_path: str | Path, full: dict[str, Any]) -> dict[str, Any]:
    """Write `metrics_path` (headline) and `metrics/<stage>/` (tables), log the timings; returns the headline."""
    metrics_path = Path(metrics_path)
    head, tables, timings = SPLITTERS[stage](full)
    atomic_write_json(metrics_path, {stage: head})
    if tables:
        with atomic_dir(metrics_path.with_suffix("")) as tmp:
            for name, rows in tables.items():
                atomic_write_json(tmp / f"{name}.json", rows)
    log.info("%s timings (logged only, not versioned): %s", stage,
             {k: v for k, v in timings.items() if v is not None})
    return head


def count_numbers(obj: Any) -> int:
    """How many numbers (nulls included: each is a column) a metrics document holds."""
    if isinstance(obj, dict):
        return sum(count_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(count_numbers(v) for v in obj)
    return int(obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool)))
