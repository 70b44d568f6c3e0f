"""The audio-level gate: what a listener gets from each exported precision, scored like stage evaluate scores the
PyTorch samples.

The ONNX sampler generates from the evaluation's fixed holdout prompts (`eval.num_prompts` x `eval.seeds`,
`eval.duration_s`) at every precision with the same noise; the log-mel FD and KAD of each set against the holdout
clips get a bootstrap interval (`eval.bootstrap`, `eval.interval`), paired across precisions. A lossy precision whose
FD falls outside FP32's interval fails: its error moved the music by more than the noise of the measurement itself,
and the same clips cannot tell anything smaller apart. With fewer than `MIN_ITEMS` samples or holdout clips the
interval means nothing (`underpowered`), and the gate leaves the decision to per-call parity.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from lofi_lora.data import audio as audio_io
from lofi_lora.dataset.holdout import Prompt
from lofi_lora.metrics import bootstrap as bs
from lofi_lora.metrics.embeddings import get_embedder
from lofi_lora.metrics.fad import frechet_distance, gaussian_stats, kad
from lofi_lora.model.encode import prompt_metas

log = logging.getLogger(__name__)

# n items resample in C(2n-1, n) distinct ways: 3 for n=2, 35 for 4, 126 for 5. Below 5 a 95 % interval's 2.5 % tails
# hold one or two distinct values, so it is as narrow as the items happen to be alike (issue 29's rehearsal: 2
# samples and 1 clip put FP32 at 771 [769, 774] and INT4 at 768, outside it, at audio cosine 0.99985).
MIN_ITEMS = 5


class _Captured(Exception):
    """Raised by the hook once the DiT's condition inputs are captured: the rest of the pipeline is not needed."""


@torch.no_grad()
def prompt_conditions(pipe, prompts: Sequence[Prompt], duration_s: float) -> list[dict[str, np.ndarray]]:
    """The DiT's condition inputs (encoder states, context latents) per prompt, from the pipeline's own encoding."""
    out: list[dict[str, np.ndarray]] = []

    def hook(_module, _args, kwargs):
        out.append({"enc": kwargs["encoder_hidden_states"].detach().float().cpu().numpy(),
                    "ctx": kwargs["context_latents"].detach().float().cpu().numpy()})
        raise _Captured

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for p in prompts:
            try:
                pipe(prompt=p.caption, lyrics=p.lyrics, vocal_language=p.vocal_language, audio_duration=duration_s,
                     num_inference_steps=1, guidance_scale=1.0, output_type="np",
                     **prompt_metas(p.bpm, p.keyscale, p.timesignature))
            except _Captured:
                pass
    finally:
        handle.remove()
    return out


def gate_noise(conditions: Sequence[Mapping[str, np.ndarray]], seeds: Sequence[int], acoustic: int
               ) -> list[tuple[int, np.ndarray]]:
    """(prompt index, initial noise) per prompt x seed, the same for every precision."""
    jobs = []
    for i, c in enumerate(conditions):
        frames = int(c["ctx"].shape[1])
        for s in seeds:
            rng = np.random.default_rng([int(s), i])
            jobs.append((i, rng.standard_normal((1, frames, acoustic), dtype=np.float32)))
    return jobs


def score_precisions(generate: Callable[[str, int, np.ndarray], np.ndarray], precisions: Sequence[str],
                     jobs: Sequence[tuple[int, np.ndarray]], reference_files: Sequence[str], sample_rate: int,
                     replicates: int, level: float, seed: int) -> dict[str, dict[str, Any]]:
    """Per precision: log-mel FD and KAD of its samples against the reference clips, each with its bootstrap
    interval, and its difference from FP32's (paired). `generate(precision, prompt index, noise)` -> [1, C, S]."""
    emb = get_embedder("logmel")
    ref_clips = [emb.embed(*audio_io.read(f)) for f in reference_files]
    y = np.concatenate(ref_clips)
    ref_stats, bandwidth = gaussian_stats(y, len(ref_clips)), kad(y, y)[1]
    ref = bs.Reference.of(ref_clips, bandwidth)
    draws = bs.draws(len(jobs), len(ref_clips), replicates, seed)
    out: dict[str, dict[str, Any]] = {}
    reps: dict[str, dict[str, np.ndarray]] = {}
    for p in precisions:
        clips = [emb.embed(generate(p, i, noise)[0], sample_rate) for i, noise in jobs]
        x = np.concatenate(clips)
        reps[p] = bs.replicates(clips, ref, draws)
        fig = {"fd": frechet_distance(gaussian_stats(x, len(clips)), ref_stats), "kad": kad(x, y, bandwidth)[0]}
        for k in ("fd", "kad"):
            fig[f"{k}_low"], fig[f"{k}_high"] = bs.interval(reps[p][k], level, fig[k])
            if p != "fp32" and "fp32" in reps:
                fig[f"{k}_vs_fp32_low"], fig[f"{k}_vs_fp32_high"] = bs.interval(
                    reps[p][k] - reps["fp32"][k], level, fig[k] - out["fp32"][k])
        out[p] = {"metric": emb.metric_id, "samples": len(clips), "reference_clips": len(ref_clips), **fig}
        log.info("audio gate %s: %s %.5g [%.5g, %.5g], KAD %.4g", p, emb.metric_id, fig["fd"], fig["fd_low"],
                 fig["fd_high"], fig["kad"])
    return out


def underpowered(fp32: Mapping[str, Any]) -> str | None:
    """Why FP32's interval cannot decide (too few samples or holdout clips to resample), or None."""
    n, c = int(fp32["samples"]), int(fp32["reference_clips"])
    if min(n, c) >= MIN_ITEMS:
        return None
    return (f"{n} samples and {c} holdout clips: the bootstrap interval needs at least {MIN_ITEMS} of each "
            f"(eval.num_prompts x eval.seeds, and the holdout split)")


def passes(fig: Mapping[str, Any], fp32: Mapping[str, Any]) -> bool:
    """A lossy precision passes when its FD lies inside FP32's interval."""
    return fp32["fd_low"] <= fig["fd"] <= fp32["fd_high"]
