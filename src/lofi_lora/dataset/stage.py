"""Stage dataset: a HuggingFace dataset split by track, and the per-clip cache of what the DiT consumes.

The cache holds, per clip, the tensors upstream ACE-Step 1.5 preprocessing stores (`target_latents [T, C]`,
`attention_mask [T]`, `encoder_hidden_states [L, H]`, `encoder_attention_mask [L]`, `context_latents [T, 2C]`)
as `<clip_id>.safetensors`, keyed by clip id and by an input hash (audio bytes + sidecar fields + model
weights hash + cache settings), so a rerun only computes clips whose inputs changed. Every entry and the
manifest are written atomically one by one: an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lofi_lora.data import audio as audio_io
from lofi_lora.core.errors import DataError
from lofi_lora.dataset import _rows
from lofi_lora.core.fsutil import atomic_write_json, path_inside, read_json, save_safetensors, sha256_file

log = logging.getLogger(__name__)

CACHE_MANIFEST = "manifest.json"
CACHE_VERSION = 1
CACHE_KEYS = ("target_latents", "attention_mask", "encoder_hidden_states", "encoder_attention_mask",
              "context_latents")
SPLITS = ("train", "holdout")


# --------------------------------------------------------------------------------------------------------------
# records: clips.json + sidecars
# --------------------------------------------------------------------------------------------------------------

def _opt_str(v: Any) -> str | None:
    return None if v is None or str(v).strip() in ("", "N/A") else str(v).strip()


def _opt_float(v: Any, where: str) -> float | None:
    if v is None or v == "" or v == "N/A":
        return None
    try:
        return float(v)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: not a number ({v!r})") from e


def load_records(clips_dir: str | Path, annotations_dir: str | Path) -> list[dict]:
    """One record per clip of `clips.json`, merged with its sidecar `<annotations>/<clip_id>.json`.

    Raises:
        DataError: clips.json or a sidecar is missing or malformed (names the file and key).
    """
    clips_f = Path(clips_dir) / "clips.json"
    if not clips_f.is_file():
        raise DataError(f"{clips_f} is missing: run stage preprocess first")
    clips = read_json(clips_f).get("clips")
    if not isinstance(clips, list):
        raise DataError(f"{clips_f}: key `clips` must be a list")
    records, seen = [], set()
    for i, clip in enumerate(clips):
        for k in ("clip_id", "track_id", "wav"):
            if not clip.get(k):
                raise DataError(f"{clips_f}: clips[{i}] has no `{k}`")
        cid = str(clip["clip_id"])
        if cid in seen:
            raise DataError(f"{clips_f}: clip_id {cid!r} appears twice")
        seen.add(cid)
        side_f = Path(annotations_dir) / f"{cid}.json"
        if not side_f.is_file():
            raise DataError(f"{side_f} is missing: every clip needs a sidecar (run stage annotate)")
        side = read_json(side_f)
        if not isinstance(side.get("caption"), str) or not side["caption"].strip():
            raise DataError(f"{side_f}: key `caption` must be a non-empty string")
        if side.get("track_id") not in (None, clip["track_id"]):
            raise DataError(f"{side_f}: track_id {side['track_id']!r} differs from clips.json ({clip['track_id']!r})")
        styles = side.get("style_ids") or []
        if not isinstance(styles, list):
            raise DataError(f"{side_f}: key `style_ids` must be a list")
        wav = Path(clip["wav"])
        if not wav.is_file():
            raise DataError(f"{clips_f}: clip {cid}: audio file {wav} is missing")
        header = audio_io.info(wav)
        duration = _opt_float(clip.get("duration_s"), f"{clips_f}: clip {cid} duration_s") \
            or _opt_float(side.get("duration"), f"{side_f}: duration") or header.duration_s
        records.append({
            "clip_id": cid, "track_id": str(clip["track_id"]),
            "audio": {"path": wav.as_posix(), "sampling_rate": header.sample_rate},
            "caption": side["caption"], "lyrics": str(side.get("lyrics") or ""),
            "style_id": str(styles[0]) if styles else "", "style_ids": [str(s) for s in styles],
            "duration": float(duration), "bpm": _opt_float(side.get("bpm"), f"{side_f}: bpm"),
            "keyscale": _opt_str(side.get("keyscale")), "timesignature": _opt_str(side.get("timesignature")),
            "vocal_language": _opt_str(side.get("vocal_language") or side.get("language")) or "en",
        })
    records.sort(key=lambda r: r["clip_id"])
    return records


# --------------------------------------------------------------------------------------------------------------
# split by track
# --------------------------------------------------------------------------------------------------------------

def _track_score(track_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x00{track_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def holdout_tracks(track_ids: list[str], fraction: float, seed: int) -> set[str]:
    """Tracks held out: hash(track, seed) below `fraction`, so adding tracks never moves existing ones.

    With two or more tracks at least one is held out and at least one is kept for training.
    """
    tracks = sorted(set(track_ids))
    scores = {t: _track_score(t, seed) for t in tracks}
    holdout = {t for t in tracks if scores[t] < fraction}
    if len(tracks) >= 2 and fraction > 0 and not holdout:
        holdout = {min(tracks, key=scores.get)}
    if holdout and len(holdout) == len(tracks):  # training needs a track
        holdout.discard(max(tracks, key=scores.get))
    return holdout


def features():
    from datasets import Features, List, Value

    return Features({
        "clip_id": Value("string"), "track_id": Value("string"),
        "audio": {"path": Value("string"), "sampling_rate": Value("int32")},
        "caption": Value("string"), "lyrics": Value("string"),
        "style_id": Value("string"), "style_ids": List(Value("string")),
        "duration": Value("float64"), "bpm": Value("float64"),
        "keyscale": Value("string"), "timesignature": Value("string"), "vocal_language": Value("string"),
    })


def build_dataset(records: list[dict], holdout: set[str], repeat_count: int):
    """`DatasetDict(train, holdout)`; the train rows are repeated `repeat_count` times (clip ids unchanged)."""
    from datasets import Dataset, DatasetDict

    train = [r for r in records if r["track_id"] not in holdout]
    held = [r for r in records if r["track_id"] in holdout]
    feats = features()
    out = {}
    with tempfile.TemporaryDirectory(prefix="lofi-ds-") as cache_dir:  # never the global HF cache
        for name, rows in (("train", train * repeat_count), ("holdout", held)):
            if rows:
                ds = Dataset.from_generator(_rows, features=feats, gen_kwargs={"rows": rows},
                                            cache_dir=cache_dir, keep_in_memory=True)
            else:
                ds = Dataset.from_dict({k: [] for k in feats}, features=feats)
            out[name] = ds
        return DatasetDict(out)


def dataset_stats(records: list[dict], holdout: set[str], repeat_count: int) -> dict:
    """Clips, tracks and seconds per split and per style (metrics/dataset.json)."""
    def blank() -> dict:
        return {"clips": 0, "tracks": set(), "seconds": 0.0}

    splits = {s: blank() for s in SPLITS}
    styles: dict[str, dict] = defaultdict(lambda: {s: {"clips": 0, "seconds": 0.0} for s in SPLITS})
    for r in records:
        s = "holdout" if r["track_id"] in holdout else "train"
        splits[s]["clips"] += 1
        splits[s]["tracks"].add(r["track_id"])
        splits[s]["seconds"] += r["duration"]
        st = styles[r["style_id"] or "none"][s]
        st["clips"] += 1
        st["seconds"] += r["duration"]
    out = {s: {"clips": v["clips"], "tracks": len(v["tracks"]), "seconds": round(v["seconds"], 3)}
           for s, v in splits.items()}
    out["train"]["rows"] = out["train"]["clips"] * repeat_count
    out["holdout"]["rows"] = out["holdout"]["clips"]
    return {"splits": out, "repeat_count": repeat_count,
            "styles": {k: {s: {"clips": v[s]["clips"], "seconds": round(v[s]["seconds"], 3)} for s in SPLITS}
                       for k, v in sorted(styles.items())}}


# --------------------------------------------------------------------------------------------------------------
# condition cache
# --------------------------------------------------------------------------------------------------------------

def input_hash(record: dict, audio_sha256: str, weights_hash: str, settings: dict) -> str:
    """What a cache entry depends on: audio bytes, the sidecar fields that reach the model, model, settings."""
    fields = {k: record[k] for k in ("caption", "lyrics", "bpm", "keyscale", "timesignature", "vocal_language",
                                     "duration")}
    blob = json.dumps({"v": CACHE_VERSION, "audio": audio_sha256, "fields": fields, "model": weights_hash,
                       "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def clip_generator(clip_id: str, latent_seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """Per-clip RNG for the VAE posterior sample: the same clip gets the same latent in any batch."""
    seed = int.from_bytes(hashlib.sha256(f"{latent_seed}\x00{clip_id}".encode()).digest()[:8], "big") >> 1
    return torch.Generator(device=device).manual_seed(seed)


def read_cache_manifest(cache_dir: str | Path) -> dict:
    f = Path(cache_dir) / CACHE_MANIFEST
    if not f.is_file():
        return {"version": CACHE_VERSION, "clips": {}}
    m = read_json(f)
    if m.get("version") != CACHE_VERSION:
        log.warning("%s: cache version %s != %s, recomputing everything", f, m.get("version"), CACHE_VERSION)
        return {"version": CACHE_VERSION, "clips": {}}
    m.setdefault("clips", {})
    return m


def read_cache(cache_dir: str | Path, clip_ids: list[str]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """The cached tensors of each clip in `clip_ids` and the sha256 of its file, found through the manifest and
    checked against it (the one reader of the cache: train, evaluate and tests use it).

    Raises:
        DataError: an entry is missing, corrupt (sha256), lacks a tensor, or its per-frame tensors differ in length.
    """
    from safetensors.torch import load_file

    cache_dir = Path(cache_dir)
    records = read_cache_manifest(cache_dir)["clips"]
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    digests: dict[str, str] = {}
    for cid in clip_ids:
        rec = records.get(cid)
        if rec is None:
            raise DataError(f"{cache_dir / CACHE_MANIFEST}: no cache entry for clip {cid!r}; run stage dataset again")
        path = cache_dir / Path(rec["file"]).name
        if not path.is_file():
            raise DataError(f"{path}: cache entry of clip {cid!r} is missing; run stage dataset again")
        digest = sha256_file(path)
        if digest != rec.get("sha256"):
            raise DataError(f"{path}: sha256 differs from {cache_dir / CACHE_MANIFEST} (cache corrupt); "
                            "run stage dataset again")
        t = load_file(str(path))
        missing = [k for k in CACHE_KEYS if k not in t]
        if missing:
            raise DataError(f"{path}: missing tensors {missing} (cache format: {list(CACHE_KEYS)})")
        n = t["target_latents"].shape[0]
        if t["attention_mask"].shape[0] != n or t["context_latents"].shape[0] != n:
            raise DataError(f"{path}: target_latents, attention_mask and context_latents differ in length")
        tensors[cid], digests[cid] = t, digest
    return tensors, digests


def split_clip_ids(dataset_dir: str | Path, split: str) -> list[str]:
    """The clip ids of one split of the saved dataset, in row order (train rows repeat `repeat_count` times)."""
    from datasets import load_from_disk

    dataset_dir = Path(dataset_dir)
    if not dataset_dir.exists():
        raise DataError(f"{dataset_dir}: dataset is missing; run stage dataset first (`dvc repro dataset`)")
    ds = load_from_disk(str(dataset_dir))
    if split not in ds or "clip_id" not in ds[split].column_names:
        raise DataError(f"{dataset_dir}: expected a DatasetDict with a `{split}` split and a `clip_id` column")
    ids = [str(c) for c in ds[split]["clip_id"]]
    if not ids:
        raise DataError(f"{dataset_dir}: the {split} split is empty")
    return ids


def compute_entries(pipe, records: list[dict], *, latent_seed: int, max_text_tokens: int,
                    max_lyric_tokens: int) -> list[dict[str, torch.Tensor]]:
    """Cache tensors for clips of equal length, in one batch (each sample equals a batch-of-one computation)."""
    sr = pipe.vae.config.sampling_rate
    waves = [audio_io.load(r["audio"]["path"], sr, pipe.vae.config.audio_channels) for r in records]
    if len({w.shape[1] for w in waves}) != 1:
        raise ValueError("compute_entries needs clips of equal length (zero padding would change the latents)")
    return encode_batch(pipe, torch.from_numpy(np.stack(waves)), records, latent_seed=latent_seed,
                        max_text_tokens=max_text_tokens, max_lyric_tokens=max_lyric_tokens)


@torch.no_grad()
def encode_batch(pipe, waves: torch.Tensor, records: list[dict], *, latent_seed: int, max_text_tokens: int,
                 max_lyric_tokens: int) -> list[dict[str, torch.Tensor]]:
    """The cache step proper on decoded audio `[B, 2, N]` (what benchmarks/cache_throughput.py times)."""
    from lofi_lora.model.encode import context_latents, encode_audio, encode_conditions
    from lofi_lora.model.load import load_pipeline, weights_digest

    device = pipe._execution_device
    gens = [clip_generator(r["clip_id"], latent_seed, device) for r in records]
    target = encode_audio(pipe, waves.to(device), generator=gens)
    states, mask = encode_conditions(
        pipe, [r["caption"] for r in records], [r["lyrics"] for r in records],
        vocal_language=[r["vocal_language"] for r in records], bpm=[r["bpm"] for r in records],
        keyscale=[r["keyscale"] for r in records], timesignature=[r["timesignature"] for r in records],
        duration_s=[r["duration"] for r in records], max_text_tokens=max_text_tokens,
        max_lyric_tokens=max_lyric_tokens)
    frames = target.shape[1]
    context = context_latents(pipe, frames, batch_size=len(records))
    out = []
    for i in range(len(records)):
        n = int(mask[i].sum())
        out.append({
            "target_latents": target[i].cpu().contiguous(),
            "attention_mask": torch.ones(frames, dtype=torch.bool),
            "encoder_hidden_states": states[i, :n].cpu().contiguous(),
            "encoder_attention_mask": mask[i, :n].cpu().contiguous(),
            "context_latents": context[i].cpu().contiguous(),
        })
    return out


def build_cache(pipe, records: list[dict], cache_dir: str | Path, *, weights_hash: str, batch_size: int,
                latent_seed: int, max_text_tokens: int, max_lyric_tokens: int) -> dict:
    """Bring `cache_dir` up to date for `records`: reuse unchanged entries, compute the rest, drop stale ones."""
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_cache_manifest(cache_dir)
    entries: dict[str, dict] = manifest["clips"]
    settings = {"max_text_tokens": max_text_tokens, "max_lyric_tokens": max_lyric_tokens,
                "latent_seed": latent_seed, "dtype": str(pipe.transformer.dtype)}
    wanted = {r["clip_id"] for r in records}
    for cid in sorted(set(entries) - wanted):  # clips that left the dataset
        (cache_dir / entries.pop(cid)["file"]).unlink(missing_ok=True)

    todo: list[tuple[dict, str]] = []
    for r in records:
        h = input_hash(r, sha256_file(r["audio"]["path"]), weights_hash, settings)
        e = entries.get(r["clip_id"])
        f = cache_dir / e["file"] if e else None
        if e and e.get("input_hash") == h and f.is_file() and sha256_file(f) == e.get("sha256"):
            continue
        todo.append((r, h))
        if e:  # outdated: drop it now, so the manifest never lists an entry that does not match its inputs
            entries.pop(r["clip_id"])
            f.unlink(missing_ok=True)
    manifest.update(version=CACHE_VERSION, model_fingerprint=weights_hash, settings=settings)  # key kept: cache identity
    atomic_write_json(cache_dir / CACHE_MANIFEST, manifest)

    groups: dict[int, list] = defaultdict(list)  # equal sample counts batch together
    for r, h in todo:
        groups[audio_io.info(r["audio"]["path"]).frames].append((r, h))
    batches = [g[i:i + batch_size] for _, g in sorted(groups.items()) for i in range(0, len(g), batch_size)]
    t0 = time.perf_counter()
    seconds = 0.0
    for batch in tqdm(batches, desc="cache", unit="batch", disable=not batches):
        tensors = compute_entries(pipe, [r for r, _ in batch], latent_seed=latent_seed,
                                  max_text_tokens=max_text_tokens, max_lyric_tokens=max_lyric_tokens)
        for (r, h), t in zip(batch, tensors):
            name = f"{r['clip_id']}.safetensors"
            save_safetensors(path_inside(cache_dir, name), t, {"clip_id": r["clip_id"], "input_hash": h, "model": weights_hash})
            entries[r["clip_id"]] = {"file": name, "sha256": sha256_file(cache_dir / name), "input_hash": h,
                                     "latent_frames": int(t["target_latents"].shape[0]),
                                     "condition_tokens": int(t["encoder_hidden_states"].shape[0])}
            seconds += r["duration"]
        manifest["clips"] = dict(sorted(entries.items()))
        atomic_write_json(cache_dir / CACHE_MANIFEST, manifest)
    elapsed = time.perf_counter() - t0
    return {"computed": len(todo), "reused": len(records) - len(todo), "computed_s": round(seconds, 2),
            "cache_s": round(elapsed, 2),
            "clip_s_per_s": round(seconds / elapsed, 2) if todo and elapsed > 0 else None}


# --------------------------------------------------------------------------------------------------------------
# stage entry
# --------------------------------------------------------------------------------------------------------------

def run_dataset(cfg) -> dict:
    """Stage dataset: records -> split -> `paths.dataset` (DatasetDict) + `paths.cache` + metrics/dataset.json."""
    from lofi_lora.model.encode import context_latents, encode_audio, encode_conditions
    from lofi_lora.model.load import load_pipeline, weights_digest
    from lofi_lora.core.fsutil import atomic_dir
    from lofi_lora.core.runtime import placement

    dcfg = cfg.dataset
    records = load_records(cfg.paths.clips, cfg.paths.annotations)
    if not records:
        raise DataError(f"{cfg.paths.clips}/clips.json lists no clips")
    holdout = holdout_tracks([r["track_id"] for r in records], dcfg.holdout_fraction, dcfg.split_seed)
    repeat = dcfg.repeat_count
    ds = build_dataset(records, holdout, repeat)
    with atomic_dir(cfg.paths.dataset) as tmp:
        ds.save_to_disk(str(tmp))
    stats = dataset_stats(records, holdout, repeat)

    base = cfg.paths.base_model
    place = placement(cfg.model.dtype, gpu_memory_gib=cfg.runtime.gpu_memory_gib)
    pipe = load_pipeline(cfg.model, base, device="cpu", dtype=place.weights_dtype)
    for name, module in pipe.components.items():  # the DiT caches nothing: on the GPU it took 3.2 GB (2B), 8.3 (XL)
        if name != "transformer" and isinstance(module, torch.nn.Module):
            module.to(place.device)
    pipe.set_progress_bar_config(disable=True)
    cache = build_cache(pipe, records, cfg.paths.cache, weights_hash=weights_digest(base),
                        batch_size=dcfg.cache_batch_size, latent_seed=dcfg.latent_seed,
                        max_text_tokens=dcfg.max_text_tokens, max_lyric_tokens=dcfg.max_lyric_tokens)
    stats["cache"] = {k: cache[k] for k in ("computed", "reused")}
    from lofi_lora.core.results import write_stage_metrics

    write_stage_metrics("dataset", Path(cfg.paths.metrics) / "dataset.json", stats)
    log.info("dataset: train %d clips (%d rows), holdout %d clips from %d tracks; cache %s",
             stats["splits"]["train"]["clips"], stats["splits"]["train"]["rows"], stats["splits"]["holdout"]["clips"],
             stats["splits"]["holdout"]["tracks"], cache)
    return {"train_clips": stats["splits"]["train"]["clips"], "train_rows": stats["splits"]["train"]["rows"],
            "holdout_clips": stats["splits"]["holdout"]["clips"], "train_s": stats["splits"]["train"]["seconds"],
            "holdout_s": stats["splits"]["holdout"]["seconds"], **cache}
