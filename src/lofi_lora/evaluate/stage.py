"""Stage `evaluate`: the base model and each (newest) checkpoint, scored the same way, and the best one picked.

Per model (base = no adapter, then every checkpoint of the train manifest, or the last `eval.last_n`): the
flow-matching validation loss on the holdout cache at fixed timesteps and fixed noise. Then, for the models that are
sampled (`eval.sample`: the base and the best checkpoint by val_loss, or all): fixed-seed samples from a fixed holdout
prompt set in the variant's native sampling settings, Fréchet distances and KAD of the samples against the holdout
clips with bootstrap intervals over clips (every embedding that is available; an unavailable one is a null with its
reason), and the CLAP score with its baselines (null with a reason when no CLAP weights are configured). The best
checkpoint is compared with the base by a paired bootstrap of the difference, and seeded noise is scored the same way
as a floor. Nothing is written under the train stage's checkpoint folder.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lofi_lora.data import audio as audio_io
from lofi_lora.core.config import to_plain
from lofi_lora.core.errors import CheckpointError, ConfigError, DataError
from lofi_lora.core.fsutil import atomic_dir, atomic_write_json, atomic_write_text
from lofi_lora.core.records import Metric, Record, flat as flat_scores
from lofi_lora.dataset.holdout import Prompt, holdout_rows, prompt_set
from lofi_lora.metrics import bootstrap as bs
from lofi_lora.metrics import metric
from lofi_lora.model.variants import sampling_settings

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
BASE = "base"
NOISE = "noise"
REAL = "train clips"


@dataclass
class ModelEval:
    """Everything measured for one model (base or one checkpoint)."""

    label: str
    step: int
    adapter_dir: str | None
    samples: list[dict] = field(default_factory=list)
    records: dict[str, Record] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    weight_name: str | None = None      # the adapter file in adapter_dir; None = the raw adapter (EMA: eval.ema)
    replicates: dict[str, Any] = field(default_factory=dict)  # metric id -> bootstrap replicates (not written)

    def add(self, *records: Record) -> None:
        self.records.update((r.id, r) for r in records)

    def value(self, metric_id: str) -> Any:
        r = self.records.get(metric_id)
        return None if r is None else r.value

    @property
    def scores(self) -> dict[str, Any]:
        """The flat form written to best/scores.json."""
        return flat_scores(self.records.values())


# ------------------------------------------------------------------------------------------------- inputs


def select_checkpoints(lora_dir: Path, last_n: int | None) -> tuple[list[dict], dict]:
    """Verified manifest entries to evaluate (newest `last_n`, or all) and the manifest itself."""
    from lofi_lora.train.checkpoints import CheckpointStore

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

    from lofi_lora.model.encode import prompt_metas

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


def validation_loss(transformer, cache: list[dict], timesteps: list[float], seed: int, device: str) -> dict:
    """Training's flow-matching loss on the holdout cache at fixed timesteps with fixed noise (same for every model).

    One clip per call (no padding); the noise of clip i is drawn on the CPU from a generator seeded with seed + i,
    so only the model differs between evaluations. Mean over clips per timestep, then over timesteps.
    """
    import contextlib

    import torch

    from lofi_lora.train.objective import flow_matching_loss

    if not cache:
        raise DataError("validation loss: no holdout cache entries")
    dtype = transformer.dtype
    autocast = torch.autocast(torch.device(device).type, dtype=dtype) if dtype != torch.float32 else None
    per_t: dict[float, list[float]] = {float(t): [] for t in timesteps}
    with torch.no_grad(), autocast or contextlib.nullcontext():
        for i, c in enumerate(cache):
            batch = {k: v[None].to(device) for k, v in c.items()}
            batch["target_latents"] = batch["target_latents"].float()
            noise = torch.randn(c["target_latents"].shape, generator=torch.Generator().manual_seed(seed + i))[None]
            for t in per_t:
                loss, _ = flow_matching_loss(transformer, batch, torch.full((1,), t, device=device), noise.to(device))
                per_t[t].append(float(loss))
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
              ref_vectors: np.ndarray | None = None,
              kad_bandwidth: float | None = None) -> tuple[list[Record], list | None]:
    """FD at this N, FD-inf (clips subsampled without replacement) and KAD, with the sample sizes; and FD-inf's
    points (None when it could not be fitted)."""
    from lofi_lora.metrics.fad import fd_inf, frechet_distance, gaussian_stats, kad

    x = np.concatenate(gen)
    mid = embedder.metric_id
    recs = [Record(metric(mid), frechet_distance(gaussian_stats(x, len(gen)), ref_stats)),
            Record(Metric(f"{mid}_n_clips", "", f"generated clips behind {mid}", "clips"), len(gen)),
            Record(Metric(f"{mid}_n_vectors", "", f"embedding vectors behind {mid}", "vectors"), int(x.shape[0]))]
    if ref_vectors is not None:
        recs.append(Record(metric(kad_id(mid)), kad(x, ref_vectors, kad_bandwidth)[0]))
    if len(gen) < 3:
        return recs + [Record(metric(f"{mid}_inf"), None, f"FD-inf needs >= 3 generated clips, got {len(gen)}")], None
    inf = fd_inf(gen, ref_stats, num_points=num_points, seed=seed)
    return recs + [Record(metric(f"{mid}_inf"), inf.fd_inf),
                   Record(Metric(f"{mid}_inf_slope", "", f"slope of {mid} against 1/N"), inf.slope),
                   Record(Metric(f"{mid}_inf_r2", "", f"R^2 of the {mid}_inf fit"), inf.r2)], inf.as_dict()["points"]


def check_weight_paths(ev) -> None:
    """`eval.vggish_path` / `eval.clap_path` left at `???` is a config error (null means "not available")."""
    from omegaconf import OmegaConf

    for key in ("vggish_path", "clap_path"):
        if OmegaConf.is_config(ev) and key in list(ev.keys()) and OmegaConf.is_missing(ev, key):
            raise ConfigError(f"`eval.{key}` is required by this eval config (???): set a local path, or null to "
                              "report the metric as unavailable")


def load_clap(clap_path: str | None, min_vocab: int, device: str):
    """(CLAP model, None) when `eval.clap_path` loads, else (None, the reason clap_score is null)."""
    from lofi_lora.core.errors import EmbeddingUnavailable
    from lofi_lora.metrics.clap import ClapModelLocal

    try:
        return ClapModelLocal(clap_path, device=device, min_vocab=min_vocab, metric_id="clap_score"), None
    except EmbeddingUnavailable as e:
        log.warning("%s", e)
        return None, e.reason


def pick_best(models: list[ModelEval], metric: str, mode: str) -> ModelEval:
    """Best checkpoint (the base model is a reference, never a candidate) by `metric` (min|max)."""
    if mode not in ("min", "max"):
        raise ConfigError(f"`eval.best_mode` = {mode!r}: expected min or max")
    cands = [m for m in models if m.label != BASE]
    vals = [(m.value(metric), m) for m in cands]
    ok = [(v, m) for v, m in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if not ok:
        known = sorted(cands[0].records if cands else {})
        rec = cands[0].records.get(metric) if cands else None
        reason = rec.reason if rec else None
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

    rows = [{"step": m.step, "model": m.label, **{k: m.value(k) for k in metric_keys}} for m in models]
    atomic_write_json(plots_dir / "metrics.json", rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["step", "model", *metric_keys], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write_text(plots_dir / "metrics.csv", buf.getvalue())
    from lofi_lora.core.fsutil import atomic_path

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


# ------------------------------------------------------------------------------------------------- stage


@dataclass
class Reference:
    """An embedding's statistics of the holdout clips, which every model's samples are compared with."""

    embedder: Any
    stats: Any
    vectors: np.ndarray
    kad_bandwidth: float
    boot: bs.Reference        # per-clip sums for the bootstrap


@dataclass
class EvalSetup:
    """What every model is scored with: prompts, sampling, holdout cache, references, CLAP."""

    prompts: list[Prompt]
    seeds: list[int]
    duration_s: float
    settings: dict
    cache: list[dict]
    references: list[Reference]
    unavailable: dict[str, str]          # metric id -> why it is null
    clap: Any
    clap_reason: str | None
    replicates: int = 1000               # bootstrap replicates per interval
    level: float = 0.95                  # the intervals' coverage
    seed: int = 0
    clap_holdout: dict | None = None     # holdout CLAP baseline, measured with the first model

    def draws(self, n_gen: int, ref: Reference) -> bs.Draws:
        """The same resamples for every model scored against `ref` (paired bootstrap)."""
        return bs.draws(n_gen, ref.stats.n_clips, self.replicates, self.seed)


def references(ev, ref_files: list[str], device: str) -> tuple[list[Reference], dict[str, str]]:
    """The configured embedding plus the always-available log-mel one, measured on the holdout clips."""
    from lofi_lora.core.errors import EmbeddingUnavailable
    from lofi_lora.metrics.embeddings import get_embedder
    from lofi_lora.metrics.fad import gaussian_stats, kad

    refs, unavailable = [], {}
    for kind in dict.fromkeys([ev.embedding, "logmel"]):
        try:
            emb = get_embedder(kind, to_plain(ev), device=device)
        except EmbeddingUnavailable as e:
            log.warning("%s", e)
            unavailable[e.metric_id] = e.reason
            continue
        vecs = embed_files(emb, ref_files)
        allv = np.concatenate(vecs)
        bandwidth = kad(allv, allv)[1]  # fixed here, for every model
        refs.append(Reference(emb, gaussian_stats(allv, len(vecs)), allv, bandwidth, bs.Reference.of(vecs, bandwidth)))
        log.info("reference %s: %d holdout clips, %d vectors", emb.metric_id, len(vecs), refs[-1].stats.n_vectors)
    return refs, unavailable


def score_distances(m: ModelEval, audio: list[tuple[np.ndarray, int]], setup: EvalSetup, fad_inf_points: int,
                    seed: int) -> None:
    """FD/KAD per embedding with their bootstrap intervals (nulls with reasons for unavailable ones)."""
    for ref in setup.references:
        mid = ref.embedder.metric_id
        vecs = [ref.embedder.embed(x, sr) for x, sr in audio]
        recs, points = fd_scores(ref.embedder, vecs, ref.stats, fad_inf_points, seed, ref.vectors, ref.kad_bandwidth)
        reps = bs.replicates(vecs, ref.boot, setup.draws(len(vecs), ref))
        m.replicates.update({mid: reps["fd"], kad_id(mid): reps["kad"]})
        recs = [dataclasses.replace(r, **dict(zip(("low", "high"), bs.interval(m.replicates[r.id], setup.level,
                                                                                r.value))))
                if r.id in m.replicates else r for r in recs]
        m.details[mid] = {"fd_inf_points": points, **ref.embedder.describe(),
                          "kad_bandwidth": ref.kad_bandwidth, "reference_clips": ref.stats.n_clips,
                          "reference_vectors": ref.stats.n_vectors, "bootstrap_replicates": setup.replicates,
                          "interval": setup.level}
        m.add(*recs)
    for mid, reason in setup.unavailable.items():
        m.add(*(Record(metric(k), None, reason) for k in (mid, f"{mid}_inf", kad_id(mid))))


def score_samples(m: ModelEval, files: list[str], setup: EvalSetup, fad_inf_points: int, seed: int) -> None:
    """FD/KAD per embedding and the CLAP score of one model's samples."""
    score_distances(m, [audio_io.read(f) for f in files], setup, fad_inf_points, seed)
    if setup.clap is None:
        m.add(Record(metric("clap_score"), None, setup.clap_reason))
        return
    from lofi_lora.metrics.clap import clap_scores

    prompts = setup.prompts
    hold = [audio_io.read(p.audio_path) for p in prompts] if setup.clap_holdout is None else None
    cs = clap_scores(setup.clap, [audio_io.read(f) for f in files], [s["caption"] for s in m.samples], hold,
                     [p.caption for p in prompts] if hold else None, seed)
    setup.clap_holdout = cs["clap_score_holdout"] = cs.get("clap_score_holdout", setup.clap_holdout)
    m.details["clap"] = {**cs, **setup.clap.describe()}
    m.add(Record(metric("clap_score"), cs["clap_score"]["mean"]),
          Record(metric("clap_score_shuffled"), cs["clap_score_shuffled"]["mean"]),
          Record(metric("clap_score_holdout"), setup.clap_holdout["mean"]))


@contextlib.contextmanager
def adapter_loaded(pipe, m: ModelEval):
    """`pipe` with model `m`'s adapter (none for the base) for the duration of the block."""
    from lofi_lora.train.adapters import load_into_pipeline

    if m.adapter_dir:
        load_into_pipeline(pipe, m.adapter_dir, adapter_name=f"eval_{m.label}".replace("-", "_"),
                           **({"weight_name": m.weight_name} if m.weight_name else {}))
    try:
        yield pipe
    finally:
        if m.adapter_dir:
            pipe.unload_lora_weights()


def score_val_loss(pipe, m: ModelEval, setup: EvalSetup, ev, seed: int, device: str) -> None:
    """The validation loss of one model (cheap: every model gets it)."""
    with adapter_loaded(pipe, m):
        vl = validation_loss(pipe.transformer, setup.cache, list(ev.val_timesteps), seed, device)
    m.add(Record(metric("val_loss"), vl["val_loss"]))
    m.details["val_loss"] = vl


def not_sampled(m: ModelEval, keys: list[str]) -> None:
    """Null sample metrics, with the reason, for a model `eval.sample` leaves unsampled."""
    m.add(*(Record(metric(k), None, "not sampled: eval.sample=base_and_best samples the base and the best "
                                    "checkpoint by val_loss only") for k in keys if k != "val_loss"))


def evaluate_model(pipe, m: ModelEval, setup: EvalSetup, out_dir: Path, ev, seed: int, device: str) -> None:
    """Samples and sample scores of one model (base, or base + one checkpoint's adapter)."""
    t0 = time.perf_counter()
    with adapter_loaded(pipe, m):
        m.samples = generate(pipe, setup.prompts, setup.seeds, setup.duration_s, setup.settings, device, out_dir)
    score_samples(m, [str(out_dir / s["file"]) for s in m.samples], setup, ev.fad_inf_points, seed)
    seconds = time.perf_counter() - t0  # logged only: best/scores.json must rehash the same
    atomic_write_json(out_dir / "samples.json", {"model": m.label, "step": m.step, "sampling": setup.settings,
                                                 "duration_s": setup.duration_s, "samples": m.samples})
    log.info("model %s: %s (%.1f s)", m.label, {k: round(r.value, 5) if isinstance(r.value, float) else r.value
                                                for k, r in m.records.items()}, seconds)


def metric_keys_of(setup: EvalSetup) -> list[str]:
    """The per-model metrics reported, in a fixed order."""
    fd = [r.embedder.metric_id for r in setup.references] + list(setup.unavailable)
    keys = ["val_loss", *[k for mid in fd for k in (mid, f"{mid}_inf", kad_id(mid))], "clap_score"]
    return keys + (["clap_score_shuffled", "clap_score_holdout"] if setup.clap is not None else [])


def write_best(lora_dir: Path, models: list[ModelEval], best: ModelEval, manifest: dict, ev, variant: str,
               settings: dict) -> None:
    """`best/`: the best checkpoint's files and scores.json (train's manifest with eval scores filled in; train's
    own file is never touched)."""
    scored = {"version": manifest.get("version", 1), "best_step": best.step, "best_metric": ev.best_metric,
              "best_mode": ev.best_mode, "sampling": settings, "variant": variant,
              "base": {"scores": models[0].scores, "details": models[0].details}, "checkpoints": []}
    by_step = {m.step: m for m in models[1:] if not m.weight_name}
    ema_by_step = {m.step: m for m in models[1:] if m.weight_name}
    if best.weight_name:
        scored["best_ema"] = True
    for e in manifest["checkpoints"]:
        e2 = dict(e)
        if int(e["step"]) in by_step:
            m = by_step[int(e["step"])]
            e2["scores"] = {**(e.get("scores") or {}), **m.scores}
            e2["eval_details"] = m.details
        if int(e["step"]) in ema_by_step:
            e2["ema_scores"] = ema_by_step[int(e["step"])].scores
        scored["checkpoints"].append(e2)
    from lofi_lora.train.adapters import DIFFUSERS_WEIGHT_NAME

    with atomic_dir(lora_dir / "best") as tmp:
        for f in sorted(Path(best.adapter_dir).iterdir()):
            if f.is_file() and not (best.weight_name and f.name == DIFFUSERS_WEIGHT_NAME):
                # an EMA winner: its adapter becomes best/'s adapter file (what export loads)
                shutil.copy2(f, tmp / (DIFFUSERS_WEIGHT_NAME if f.name == best.weight_name else f.name))
        atomic_write_json(tmp / "scores.json", scored)


def noise_floor(setup: EvalSetup, n: int, fad_inf_points: int, seed: int) -> ModelEval:
    """Seeded white noise (stereo, -20 dBFS RMS, as long as the samples) scored like a model: how far from the
    holdout clips a model that has learned nothing would be."""
    rng = np.random.default_rng(seed)
    m = ModelEval(NOISE, -1, None)
    audio = [(0.1 * rng.standard_normal((2, int(setup.duration_s * SAMPLE_RATE))).astype(np.float32), SAMPLE_RATE)
             for _ in range(n)]
    score_distances(m, audio, setup, fad_inf_points, seed)
    return m


def real_reference(setup: EvalSetup, train_files: list[str], n: int, fad_inf_points: int, seed: int) -> ModelEval:
    """Real music of the target style that the models never had to generate: the first `eval.duration_s` of up to
    `n` training clips (a seeded choice), scored like a model. Where a model could get to, at best."""
    rng = np.random.default_rng(seed)
    pick = sorted(rng.permutation(len(train_files))[:n].tolist())
    m = ModelEval(REAL, -1, None)
    audio = []
    for i in pick:
        x, sr = audio_io.read(train_files[i])
        audio.append((x[:, : int(setup.duration_s * sr)], sr))
    score_distances(m, audio, setup, fad_inf_points, seed)
    return m


def compare(best: ModelEval, base: ModelEval, setup: EvalSetup) -> dict[str, dict[str, Any]]:
    """Best minus base per distance, with the paired bootstrap interval of the difference and its verdict (lower is
    better for every distance: "better" means the interval lies below 0)."""
    out = {}
    for k, reps in best.replicates.items():
        if k in base.replicates and best.value(k) is not None and base.value(k) is not None:
            low, high = bs.interval(reps - base.replicates[k], setup.level, best.value(k) - base.value(k))
            out[k] = {"best": best.value(k), "base": base.value(k), "delta": best.value(k) - base.value(k),
                      "low": low, "high": high, "verdict": bs.verdict(low, high)}
    return out


def comparison_words(comparison: dict[str, dict[str, Any]], best_step: int, level: float) -> list[str]:
    """One sentence per distance: did the LoRA beat the base beyond the interval."""
    pct = f"{level:.0%}"
    words = {"better": f"the LoRA beats the base beyond the {pct} interval",
             "worse": f"the LoRA is worse than the base beyond the {pct} interval",
             "within noise": f"no difference beyond the {pct} interval (within noise)"}
    return [f"{k}: best (step {best_step}) {c['best']:.5g} vs base {c['base']:.5g}, difference {c['delta']:+.5g} "
            f"[{c['low']:+.5g}, {c['high']:+.5g}]: {words[c['verdict']]}" for k, c in comparison.items()]


def log_comparison(best: ModelEval, base: ModelEval, anchors: list[ModelEval], comparison: dict,
                   level: float) -> None:
    for line in comparison_words(comparison, best.step, level):
        log.info("evaluate: %s", line)
    for k in comparison:
        log.info("evaluate: %s: %s", k, ", ".join(f"{m.label} {m.value(k):.5g}" for m in [anchors[0], base, best,
                                                                                      *anchors[1:]]))


def eval_metrics(models: list[ModelEval], best: ModelEval, setup: EvalSetup, ev, variant: str, holdout_clips: int,
                 seconds: float, anchors: list[ModelEval], comparison: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What metrics/eval.json is made of: the best checkpoint's and the base model's records (in the reported
    order), the anchors' (noise floor, real training clips), best-minus-base with its interval, and what they were
    measured on."""
    extra = {"best_metric": ev.best_metric, "best_mode": ev.best_mode, "variant": variant,
             "num_prompts": len(setup.prompts), "seeds": len(setup.seeds), "duration_s": setup.duration_s,
             "holdout_clips": holdout_clips, "sampling_steps": setup.settings["num_inference_steps"],
             "sampled_models": [m.label for m in models if m.samples], "bootstrap_replicates": setup.replicates,
             "interval": setup.level,
             **{f"{r.embedder.metric_id}_reference_clips": r.stats.n_clips for r in setup.references},
             **{f"{r.embedder.metric_id}_reference_vectors": r.stats.n_vectors for r in setup.references},
             "seconds": seconds}
    keys = metric_keys_of(setup)
    return {"best_step": best.step, "best_metric": ev.best_metric, "best_mode": ev.best_mode,
            "num_checkpoints": len(models) - 1, "num_samples_per_model": len(best.samples), **extra,
            "records": {"best": [best.records[k].as_dict() for k in keys],
                        "base": [models[0].records[k].as_dict() for k in keys],
                        **{"noise" if a.label == NOISE else "real": [r.as_dict() for r in a.records.values()
                                                                      if r.id in comparison] for a in anchors}},
            "comparison": comparison}


def run_evaluate(cfg) -> dict[str, Any]:
    """Stage entry: evaluate base + checkpoints, write samples, best/, metrics, plots and the report."""
    from lofi_lora.model.load import load_pipeline
    from lofi_lora.dataset.stage import read_cache
    from lofi_lora.evaluate.report import write_report
    from lofi_lora.core.runtime import limit_cpu_threads, placement

    t_start = time.perf_counter()
    ev, seed, variant, paths = cfg.eval, cfg.seed, cfg.model.variant, cfg.paths
    lora_dir = Path(paths.lora)
    settings = sampling_settings(variant, to_plain(cfg.model.sampling or {}))  # conf/model/*.yaml `sampling`
    check_weight_paths(ev)
    if ev.sample == "base_and_best" and ev.best_metric != "val_loss":
        raise ConfigError(f"`eval.sample` = base_and_best picks the best checkpoint by val_loss before sampling, but "
                          f"`eval.best_metric` = {ev.best_metric}: set eval.sample=all or eval.best_metric=val_loss")
    entries, manifest = select_checkpoints(lora_dir, ev.last_n)
    rows = holdout_rows(Path(paths.dataset), Path(paths.clips))
    prompts = prompt_set(rows, ev.num_prompts, seed)
    cache, _ = read_cache(paths.cache, [str(r["clip_id"]) for r in rows])
    place = placement(cfg.model.dtype, gpu_memory_gib=cfg.runtime.gpu_memory_gib)
    device = str(place.device)
    limit_cpu_threads(place.device.type, ev.cpu_threads)
    log.info("evaluate: base + %d checkpoints, %d prompts x %d seeds, %.1f s, %s %s, sampling %s",
             len(entries), len(prompts), len(ev.seeds), ev.duration_s, device, place.weights_dtype, settings)
    refs, unavailable = references(ev, [r["audio_path"] for r in rows], device)
    clap, clap_reason = load_clap(ev.clap_path, ev.clap_min_vocab, device)
    setup = EvalSetup(prompts, list(ev.seeds), float(ev.duration_s), settings, list(cache.values()), refs,
                      unavailable, clap, clap_reason, int(ev.bootstrap), float(ev.interval), int(seed))

    pipe = load_pipeline(cfg.model, paths.base_model, device=device, dtype=place.weights_dtype)
    pipe.set_progress_bar_config(disable=True)
    models = [ModelEval(BASE, 0, None)] + [ModelEval(f"{int(e['step']):06d}", int(e["step"]), e["_dir"])
                                           for e in entries]
    if ev.ema:  # each checkpoint's EMA adapter as one more candidate, `<step>-ema`
        from lofi_lora.train.adapters import EMA_WEIGHT_NAME

        ema = [ModelEval(f"{int(e['step']):06d}-ema", int(e["step"]), e["_dir"], weight_name=EMA_WEIGHT_NAME)
               for e in entries if EMA_WEIGHT_NAME in e.get("files", {})]
        if not ema:  # a sweep over train.ema_decay=0,0.999 with eval.ema=true: the EMA-off jobs score raw only
            log.warning("eval.ema=true but no evaluated checkpoint holds an EMA adapter (train.ema_decay=0): "
                        "scoring the raw adapters only")
        models += ema
    for m in models:
        score_val_loss(pipe, m, setup, ev, seed, device)
    sampled = models if ev.sample == "all" else [models[0], pick_best(models, "val_loss", ev.best_mode)]
    samples_root = lora_dir / "samples"
    with atomic_dir(samples_root) as tmp_samples:
        for m in models:
            if any(m is x for x in sampled):
                evaluate_model(pipe, m, setup, tmp_samples / m.label, ev, seed, device)
            else:
                not_sampled(m, metric_keys_of(setup))
    for m in models:  # paths of the samples after the folder was swapped in
        for s in m.samples:
            s["path"] = str(samples_root / m.label / s["file"])

    best = pick_best(models, ev.best_metric, ev.best_mode)
    noise = noise_floor(setup, len(best.samples), int(ev.fad_inf_points), seed)
    train_files = [r["audio_path"] for r in holdout_rows(Path(paths.dataset), Path(paths.clips), split="train")]
    real = real_reference(setup, train_files, len(best.samples), int(ev.fad_inf_points), seed)
    comparison = compare(best, models[0], setup)
    log_comparison(best, models[0], [noise, real], comparison, setup.level)
    write_best(lora_dir, models, best, manifest, ev, variant, settings)
    flat = eval_metrics(models, best, setup, ev, variant, len(rows), round(time.perf_counter() - t_start, 2),
                        [noise, real], comparison)
    from lofi_lora.core.results import write_stage_metrics

    write_stage_metrics("eval", Path(paths.metrics) / "eval.json", flat)
    metric_keys = metric_keys_of(setup)
    write_plots(models, Path(paths.plots) / "eval", metric_keys, ev.best_metric)
    write_report(paths.reports, models, prompts, best, metric_keys, flat, embed_max_mb=float(ev.report_embed_max_mb),
                 anchors=[noise, real], words=comparison_words(comparison, best.step, setup.level))
    log.info("evaluate: best step %d by %s (%s) in %.1f s", best.step, ev.best_metric, ev.best_mode, flat["seconds"])
    return {k: v for k, v in flat.items() if not isinstance(v, (dict, list))}
