"""Stage `evaluate`: the base model and each (newest) checkpoint, scored the same way, and the best one picked.

Per model (base = no adapter, then every checkpoint of the train manifest, or the last `eval.last_n`):
fixed-seed samples from a fixed holdout prompt set in the variant's native sampling settings, the
flow-matching validation loss on the holdout cache at fixed timesteps and fixed noise, Fréchet distances of
the samples against the holdout clips (every embedding that is available; an unavailable one is a null with
its reason), and the CLAP score with its baselines (null with a reason when no CLAP weights are configured).
Nothing is written under the train stage's checkpoint folder.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lofi_lora import audio as audio_io
from lofi_lora.config import require, to_plain
from lofi_lora.errors import CheckpointError, ConfigError, DataError
from lofi_lora.fsutil import atomic_dir, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# Native sampling settings of each ACE-Step 1.5 variant (turbo is guidance-distilled: no CFG).
SAMPLING: dict[str, dict[str, float]] = {
    "turbo": {"num_inference_steps": 8, "shift": 3.0, "guidance_scale": 1.0},
    "base": {"num_inference_steps": 50, "shift": 1.0, "guidance_scale": 7.0},
    "sft": {"num_inference_steps": 50, "shift": 1.0, "guidance_scale": 7.0},
}
SAMPLE_RATE = 48000
BASE = "base"


@dataclass
class Prompt:
    """One prompt of the fixed evaluation set, drawn from a holdout clip (whose audio sits beside it)."""

    index: int
    clip_id: str
    caption: str
    lyrics: str
    bpm: Any
    keyscale: Any
    timesignature: Any
    vocal_language: str
    audio_path: str


@dataclass
class ModelEval:
    """Everything measured for one model (base or one checkpoint)."""

    label: str
    step: int
    adapter_dir: str | None
    samples: list[dict] = field(default_factory=list)
    scores: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- inputs


def sampling_settings(variant: str) -> dict[str, float]:
    if variant not in SAMPLING:
        raise ConfigError(f"`model.variant` = {variant!r}: no sampling settings (expected one of {sorted(SAMPLING)})")
    return dict(SAMPLING[variant])


def _holdout(dataset_dir: Path):
    from datasets import Audio, load_from_disk

    if not dataset_dir.is_dir():
        raise DataError(f"{dataset_dir}: dataset folder is missing: run stage dataset first")
    dd = load_from_disk(str(dataset_dir))
    if "holdout" not in dd:
        raise DataError(f"{dataset_dir}: no `holdout` split (splits: {list(dd)})")
    ho = dd["holdout"]
    if "audio" in ho.column_names and isinstance(ho.features["audio"], Audio):
        ho = ho.cast_column("audio", Audio(decode=False))
    if len(ho) == 0:
        raise DataError(f"{dataset_dir}: the holdout split is empty; evaluation needs held-out clips")
    return ho


def _audio_path(row: dict, clips_dir: Path) -> str:
    a = row.get("audio")
    if isinstance(a, dict) and a.get("path") and Path(a["path"]).is_file():
        return str(a["path"])
    p = clips_dir / "wav" / f"{row['clip_id']}.wav"
    if not p.is_file():
        raise DataError(f"holdout clip {row['clip_id']}: audio not found ({a!r}, {p})")
    return str(p)


def holdout_rows(dataset_dir: Path, clips_dir: Path) -> list[dict]:
    """Holdout rows sorted by clip_id with a resolved `audio_path`."""
    ho = _holdout(dataset_dir)
    rows = sorted((dict(r) for r in ho), key=lambda r: str(r["clip_id"]))
    for r in rows:
        r["audio_path"] = _audio_path(r, clips_dir)
    return rows


def prompt_set(rows: list[dict], num_prompts: int, seed: int) -> list[Prompt]:
    """A fixed, seeded choice of `num_prompts` holdout clips (all of them when there are fewer)."""
    if num_prompts < 1:
        raise ConfigError(f"`eval.num_prompts` = {num_prompts}: must be >= 1")
    rng = np.random.default_rng(seed)
    idx = sorted(rng.permutation(len(rows))[: min(num_prompts, len(rows))].tolist())
    if len(idx) < num_prompts:
        log.warning("eval.num_prompts=%d but the holdout has %d clips: using all of them", num_prompts, len(rows))
    out = []
    for i, j in enumerate(idx):
        r = rows[j]
        out.append(Prompt(i, str(r["clip_id"]), str(r.get("caption") or ""), str(r.get("lyrics") or ""),
                          r.get("bpm"), r.get("keyscale"), r.get("timesignature"),
                          str(r.get("vocal_language") or "en"), r["audio_path"]))
    return out


def select_checkpoints(lora_dir: Path, last_n: int | None) -> tuple[list[dict], dict]:
    """Verified manifest entries to evaluate (newest `last_n`, or all) and the manifest itself."""
    from lofi_lora.checkpoints import CheckpointStore

    store = CheckpointStore(lora_dir / "checkpoints")
    if not (store.root / "manifest.json").is_file():
        raise CheckpointError(f"{store.root / 'manifest.json'} is missing: run stage train first")
    manifest = store.manifest()
    entries = store.entries()
    if not entries:
        raise CheckpointError(f"{store.root / 'manifest.json'} lists no checkpoints")
    if last_n is not None:
        if int(last_n) < 1:
            raise ConfigError(f"`eval.last_n` = {last_n}: must be >= 1 or null (all)")
        entries = entries[-int(last_n):]
    for e in entries:
        e["_dir"] = str(store.verify(e))
    return entries, manifest


# ------------------------------------------------------------------------------------------------- model work


def generate(pipe, prompts: list[Prompt], seeds: list[int], duration_s: float, settings: dict, device: str,
             out_dir: Path) -> list[dict]:
    """One sample per (prompt, seed), batch of one (exactly what inference runs), saved as 48 kHz WAV."""
    import torch
    from tqdm import tqdm

    from lofi_lora.backend import prompt_metas

    records = []
    jobs = [(p, s) for p in prompts for s in seeds]
    for p, s in tqdm(jobs, desc=f"samples {out_dir.name}", leave=False):
        gen = torch.Generator(device="cpu").manual_seed(int(s))
        metas = prompt_metas(p.bpm, p.keyscale, p.timesignature)
        with torch.no_grad():
            out = pipe(prompt=p.caption, lyrics=p.lyrics, vocal_language=p.vocal_language, audio_duration=duration_s,
                       generator=gen, output_type="pt", **metas, **settings)
        wav = out.audios[0].float().cpu().numpy()
        if not np.isfinite(wav).all():
            raise DataError(f"sample {out_dir.name}/p{p.index:02d}_s{s}: generated audio has NaN/inf")
        name = f"p{p.index:02d}_s{s}.wav"
        audio_io.write(out_dir / name, wav, SAMPLE_RATE)
        records.append({"file": name, "prompt_index": p.index, "seed": int(s), "clip_id": p.clip_id,
                        "caption": p.caption, "duration_s": wav.shape[-1] / SAMPLE_RATE})
    return records


def load_cache(cache_dir: Path, clip_ids: list[str]) -> list[dict]:
    from safetensors.torch import load_file

    out = []
    for cid in clip_ids:
        f = cache_dir / f"{cid}.safetensors"
        if not f.is_file():
            raise DataError(f"{f}: cache entry of holdout clip {cid} is missing: run stage dataset")
        t = load_file(str(f))
        for k in ("target_latents", "attention_mask", "encoder_hidden_states", "encoder_attention_mask",
                  "context_latents"):
            if k not in t:
                raise DataError(f"{f}: missing tensor `{k}`")
        out.append(t)
    return out


def validation_loss(transformer, cache: list[dict], timesteps: list[float], seed: int, device: str) -> dict:
    """Flow-matching loss on the holdout cache at fixed timesteps with fixed noise (same for every model).

    x_t = t*noise + (1-t)*x0, target velocity noise - x0, MSE over valid latent frames; the noise of clip i is
    drawn from a generator seeded with seed + i, so only the model differs between evaluations.
    """
    import torch

    if not cache:
        raise DataError("validation loss: no holdout cache entries")
    dtype = transformer.dtype
    per_t = {float(t): [] for t in timesteps}
    with torch.no_grad():
        for i, c in enumerate(cache):
            x0 = c["target_latents"].float()
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i))
            mask = c["attention_mask"].float()
            emask = c["encoder_attention_mask"].bool()
            ehs = c["encoder_hidden_states"][emask][None].to(device, dtype)
            ctx = c["context_latents"][None].to(device, dtype)
            for t in timesteps:
                xt = (t * noise + (1.0 - t) * x0)[None].to(device, dtype)
                tt = torch.full((1,), float(t), device=device, dtype=dtype)
                v = transformer(hidden_states=xt, timestep=tt, timestep_r=tt, encoder_hidden_states=ehs,
                                context_latents=ctx, return_dict=False)[0][0].float().cpu()
                err = ((v - (noise - x0)) ** 2).mean(dim=-1)
                per_t[float(t)].append(float((err * mask).sum() / mask.sum().clamp(min=1.0)))
    means = {t: float(np.mean(v)) for t, v in per_t.items()}
    return {"val_loss": float(np.mean(list(means.values()))), "per_timestep": {f"{t:g}": v for t, v in means.items()},
            "n_clips": len(cache), "timesteps": [float(t) for t in timesteps]}


# ------------------------------------------------------------------------------------------------- metrics


def embed_files(embedder, files: list[str]) -> list[np.ndarray]:
    out = []
    for f in files:
        x, sr = audio_io.read(f)
        out.append(embedder.embed(x, sr))
    return out


def kad_id(metric_id: str) -> str:
    """KAD key beside an FD key: fd_logmel128_v1 -> kad_logmel128_v1, fad_vggish -> kad_vggish."""
    return "kad_" + metric_id.split("_", 1)[1]


def fd_scores(embedder, gen: list[np.ndarray], ref_stats, num_points: int, seed: int,
              ref_vectors: np.ndarray | None = None, kad_bandwidth: float | None = None) -> dict[str, Any]:
    """FD at this N, FD-inf (clips subsampled without replacement) and KAD, with the sample sizes."""
    from lofi_lora.metrics.fad import fd_inf, frechet_distance, gaussian_stats, kad

    x = np.concatenate(gen)
    mid = embedder.metric_id
    res: dict[str, Any] = {mid: frechet_distance(gaussian_stats(x, len(gen)), ref_stats),
                           f"{mid}_n_clips": len(gen), f"{mid}_n_vectors": int(x.shape[0])}
    if ref_vectors is not None:
        res[kad_id(mid)] = kad(x, ref_vectors, kad_bandwidth)[0]
    if len(gen) >= 3:
        inf = fd_inf(gen, ref_stats, num_points=num_points, seed=seed)
        res.update({f"{mid}_inf": inf.fd_inf, f"{mid}_inf_slope": inf.slope, f"{mid}_inf_r2": inf.r2})
        res["_fd_inf_points"] = inf.as_dict()["points"]
    else:
        res.update({f"{mid}_inf": None, f"{mid}_inf_reason": f"FD-inf needs >= 3 generated clips, got {len(gen)}"})
    return res


def check_weight_paths(ev) -> None:
    """`eval.vggish_path` / `eval.clap_path` left at `???` is a config error (null means "not available")."""
    from omegaconf import OmegaConf

    for key in ("vggish_path", "clap_path"):
        if OmegaConf.is_config(ev) and key in list(ev.keys()) and OmegaConf.is_missing(ev, key):
            raise ConfigError(f"`eval.{key}` is required by this eval config (???): set a local path, or null to "
                              "report the metric as unavailable")


def load_clap(ev, device: str):
    """(CLAP model, None) when `eval.clap_path` loads, else (None, the reason clap_score is null)."""
    from lofi_lora.metrics.clap import ClapModelLocal
    from lofi_lora.metrics.embeddings import EmbeddingUnavailable

    try:
        return ClapModelLocal(ev.get("clap_path"), device=device,
                              min_vocab=int(ev.get("clap_min_vocab") or 1000), metric_id="clap_score"), None
    except EmbeddingUnavailable as e:
        log.warning("%s", e)
        return None, e.reason


def pick_best(models: list[ModelEval], metric: str, mode: str) -> ModelEval:
    """Best checkpoint (the base model is a reference, never a candidate) by `metric` (min|max)."""
    if mode not in ("min", "max"):
        raise ConfigError(f"`eval.best_mode` = {mode!r}: expected min or max")
    cands = [m for m in models if m.label != BASE]
    vals = [(m.scores.get(metric), m) for m in cands]
    ok = [(v, m) for v, m in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if not ok:
        known = sorted(k for k in (cands[0].scores if cands else {}) if not k.endswith("_reason"))
        reason = cands[0].scores.get(f"{metric}_reason") if cands else None
        raise ConfigError(f"`eval.best_metric` = {metric!r} has no value for any checkpoint"
                          + (f" ({reason})" if reason else "") + f"; measured metrics: {known}")
    key = (lambda vm: (vm[0], -vm[1].step)) if mode == "min" else (lambda vm: (-vm[0], -vm[1].step))
    return sorted(ok, key=key)[0][1]  # ties: the later step


# ------------------------------------------------------------------------------------------------- outputs


def write_plots(models: list[ModelEval], plots_dir: Path, metric_keys: list[str], best_metric: str | None = None) -> None:
    """metric vs step as JSON and CSV (dvc plots) plus PNGs; the base model is step 0.

    The selection metric is the last column, so `dvc plots show` (y = last field by default) plots it.
    """
    if best_metric in metric_keys:
        metric_keys = [k for k in metric_keys if k != best_metric] + [best_metric]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"step": m.step, "model": m.label, **{k: m.scores.get(k) for k in metric_keys}} for m in models]
    atomic_write_json(plots_dir / "metrics.json", rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["step", "model", *metric_keys], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write_text(plots_dir / "metrics.csv", buf.getvalue())
    from lofi_lora.fsutil import atomic_path

    for k in metric_keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r[k], (int, float))]
        fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
        else:
            ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("step (0 = base model)")
        ax.set_ylabel(k)
        ax.set_title(k)
        fig.tight_layout()
        with atomic_path(plots_dir / f"{k}.png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)


def flat_metrics(models: list[ModelEval], best: ModelEval, metric_keys: list[str], extra: dict) -> dict:
    """metrics/eval.json: flat keys `dvc exp show` can sort (`<metric>_best`, `<metric>_base`, ...)."""
    base = next(m for m in models if m.label == BASE)
    out: dict[str, Any] = {"best_step": best.step, "best_metric": extra["best_metric"],
                           "best_mode": extra["best_mode"], "num_checkpoints": len(models) - 1,
                           "num_samples_per_model": len(best.samples)}
    for k in metric_keys:
        out[f"{k}_best"] = best.scores.get(k)
        out[f"{k}_base"] = base.scores.get(k)
        for src in (best.scores, base.scores):
            if src.get(f"{k}_reason"):
                out[f"{k}_reason"] = src[f"{k}_reason"]
    for k, v in best.scores.items():
        if k.endswith(("_n_clips", "_n_vectors", "_inf_slope", "_inf_r2")) and f"{k}_best" not in out:
            out[f"{k}_best"] = v
    out.update({k: v for k, v in extra.items() if k not in out})
    return out


# ------------------------------------------------------------------------------------------------- stage


def run_evaluate(cfg) -> dict[str, Any]:
    """Stage entry: evaluate base + checkpoints, write samples, best/, metrics, plots and the report."""
    import torch

    from lofi_lora.adapters import load_into_pipeline
    from lofi_lora.backend import load_pipeline
    from lofi_lora.metrics.embeddings import EmbeddingUnavailable, get_embedder
    from lofi_lora.metrics.fad import gaussian_stats, kad
    from lofi_lora.report import write_report
    from lofi_lora.runtime import pick_device

    t_start = time.perf_counter()
    ev = cfg.eval
    seed = int(cfg.get("seed", 0))
    lora_dir = Path(str(require(cfg, "paths.lora")))
    dataset_dir = Path(str(require(cfg, "paths.dataset")))
    cache_dir = Path(str(require(cfg, "paths.cache")))
    clips_dir = Path(str(require(cfg, "paths.clips")))
    base_path = Path(str(require(cfg, "paths.base_model")))
    metrics_dir = Path(str(require(cfg, "paths.metrics")))
    plots_dir = Path(str(require(cfg, "paths.plots"))) / "eval"
    reports_dir = Path(str(require(cfg, "paths.reports")))
    seeds = [int(s) for s in require(ev, "seeds")]
    duration_s = float(require(ev, "duration_s"))
    variant = str(require(cfg, "model.variant"))
    settings = sampling_settings(variant)
    best_metric, best_mode = str(require(ev, "best_metric")), str(require(ev, "best_mode"))
    timesteps = [float(t) for t in (ev.get("val_timesteps") or [0.1, 0.3, 0.5, 0.7, 0.9])]

    check_weight_paths(ev)
    entries, manifest = select_checkpoints(lora_dir, ev.get("last_n"))
    rows = holdout_rows(dataset_dir, clips_dir)
    prompts = prompt_set(rows, int(require(ev, "num_prompts")), seed)
    cache = load_cache(cache_dir, [str(r["clip_id"]) for r in rows])
    device = pick_device()
    dtype = torch.float32 if device == "cpu" else getattr(torch, str(cfg.model.get("dtype") or "bfloat16"))
    log.info("evaluate: base + %d checkpoints, %d prompts x %d seeds, %.1f s, %s %s, sampling %s",
             len(entries), len(prompts), len(seeds), duration_s, device, dtype, settings)

    # Embeddings: the configured one plus the always-available handcrafted log-mel FD.
    kinds = [str(ev.get("embedding") or "logmel")]
    if "logmel" not in kinds:
        kinds.append("logmel")
    embedders, unavailable = [], {}
    for k in kinds:
        try:
            embedders.append(get_embedder(k, to_plain(ev), device=device))
        except EmbeddingUnavailable as e:
            log.warning("%s", e)
            unavailable[e.metric_id] = e.reason
    ref_files = [r["audio_path"] for r in rows]
    ref, ref_vecs, ref_bw = {}, {}, {}
    for emb in embedders:
        vecs = embed_files(emb, ref_files)
        ref_vecs[emb.metric_id] = np.concatenate(vecs)
        ref[emb.metric_id] = gaussian_stats(ref_vecs[emb.metric_id], len(vecs))
        ref_bw[emb.metric_id] = kad(ref_vecs[emb.metric_id], ref_vecs[emb.metric_id])[1]  # fixed from the reference
        log.info("reference %s: %d holdout clips, %d vectors", emb.metric_id, len(vecs), ref[emb.metric_id].n_vectors)

    clap, clap_reason = load_clap(ev, device)
    clap_holdout = None

    pipe = load_pipeline(cfg.model, base_path, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    models = [ModelEval(BASE, 0, None)] + [ModelEval(f"{int(e['step']):06d}", int(e["step"]), e["_dir"])
                                           for e in entries]
    samples_root = lora_dir / "samples"
    with atomic_dir(samples_root) as tmp_samples:
        for m in models:
            t0 = time.perf_counter()
            if m.adapter_dir:
                load_into_pipeline(pipe, m.adapter_dir, adapter_name=f"eval_{m.label}")
            try:
                out_dir = tmp_samples / m.label
                m.samples = generate(pipe, prompts, seeds, duration_s, settings, device, out_dir)
                vl = validation_loss(pipe.transformer, cache, timesteps, seed, device)
            finally:
                if m.adapter_dir:
                    pipe.unload_lora_weights()
            m.scores["val_loss"] = vl["val_loss"]
            m.details["val_loss"] = vl
            files = [str(out_dir / s["file"]) for s in m.samples]
            for emb in embedders:
                r = fd_scores(emb, embed_files(emb, files), ref[emb.metric_id], int(ev.get("fad_inf_points") or 5),
                              seed, ref_vecs[emb.metric_id], ref_bw[emb.metric_id])
                m.details[emb.metric_id] = {"fd_inf_points": r.pop("_fd_inf_points", None), **emb.describe(),
                                            "kad_bandwidth": ref_bw[emb.metric_id],
                                            "reference_clips": ref[emb.metric_id].n_clips,
                                            "reference_vectors": ref[emb.metric_id].n_vectors}
                m.scores.update(r)
            for mid, reason in unavailable.items():
                m.scores.update({mid: None, f"{mid}_inf": None, kad_id(mid): None, f"{mid}_reason": reason,
                                 f"{kad_id(mid)}_reason": reason})
            if clap is not None:
                from lofi_lora.metrics.clap import clap_scores

                gen = [audio_io.read(f) for f in files]
                hold = [audio_io.read(p.audio_path) for p in prompts] if clap_holdout is None else None
                cs = clap_scores(clap, gen, [s["caption"] for s in m.samples], hold,
                                 [p.caption for p in prompts] if hold else None, seed)
                clap_holdout = cs.get("clap_score_holdout", clap_holdout)
                cs["clap_score_holdout"] = clap_holdout
                m.details["clap"] = {**cs, **clap.describe()}
                m.scores.update({"clap_score": cs["clap_score"]["mean"],
                                 "clap_score_shuffled": cs["clap_score_shuffled"]["mean"],
                                 "clap_score_holdout": clap_holdout["mean"]})
            else:
                m.scores.update({"clap_score": None, "clap_score_reason": clap_reason})
            seconds = time.perf_counter() - t0  # logged only: best/scores.json must rehash the same
            atomic_write_json(out_dir / "samples.json", {"model": m.label, "step": m.step, "sampling": settings,
                                                         "duration_s": duration_s, "samples": m.samples})
            log.info("model %s: %s (%.1f s)", m.label,
                     {k: round(v, 5) if isinstance(v, float) else v for k, v in m.scores.items()
                      if not k.endswith("_reason")}, seconds)
    for m in models:  # paths of the samples after the folder was swapped in
        for s in m.samples:
            s["path"] = str(samples_root / m.label / s["file"])

    best = pick_best(models, best_metric, best_mode)
    metric_keys = ["val_loss", *[k for e in embedders for k in (e.metric_id, f"{e.metric_id}_inf", kad_id(e.metric_id))],
                   *[k for mid in unavailable for k in (mid, f"{mid}_inf", kad_id(mid))], "clap_score"]
    if clap is not None:
        metric_keys += ["clap_score_shuffled", "clap_score_holdout"]

    # scores.json: the train manifest with eval scores filled in (train's own file is never touched)
    scored = {"version": manifest.get("version", 1), "best_step": best.step, "best_metric": best_metric,
              "best_mode": best_mode, "sampling": settings, "variant": variant,
              "base": {"scores": models[0].scores, "details": models[0].details},
              "checkpoints": []}
    by_step = {m.step: m for m in models[1:]}
    for e in manifest["checkpoints"]:
        e2 = dict(e)
        if int(e["step"]) in by_step:
            m = by_step[int(e["step"])]
            e2["scores"] = {**(e.get("scores") or {}), **m.scores}
            e2["eval_details"] = m.details
        scored["checkpoints"].append(e2)
    best_src = Path(best.adapter_dir)
    with atomic_dir(lora_dir / "best") as tmp:
        for f in sorted(best_src.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        atomic_write_json(tmp / "scores.json", scored)

    extra = {"best_metric": best_metric, "best_mode": best_mode, "variant": variant,
             "num_prompts": len(prompts), "seeds": len(seeds), "duration_s": duration_s,
             "holdout_clips": len(rows), "sampling_steps": settings["num_inference_steps"],
             **{f"{mid}_reference_clips": st.n_clips for mid, st in ref.items()},
             **{f"{mid}_reference_vectors": st.n_vectors for mid, st in ref.items()},
             "seconds": round(time.perf_counter() - t_start, 2)}
    flat = flat_metrics(models, best, metric_keys, extra)
    if clap is None:
        flat["clap_score_reason"] = clap_reason
    from lofi_lora.results import write_stage_metrics

    write_stage_metrics("eval", metrics_dir / "eval.json", flat)
    write_plots(models, plots_dir, metric_keys, best_metric)
    write_report(reports_dir, models, prompts, best, metric_keys, flat,
                 embed_max_mb=float(ev.get("report_embed_max_mb") or 16.0))
    log.info("evaluate: best step %d by %s (%s) in %.1f s", best.step, best_metric, best_mode, flat["seconds"])
    return {k: v for k, v in flat.items() if not isinstance(v, (dict, list))}
