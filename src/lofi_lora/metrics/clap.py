"""CLAP text-audio score from a local `transformers.ClapModel` folder, over fixed 10 s windows we cut ourselves.

The checkpoint's processor would randomly crop audio longer than 10 s (`truncation="rand_trunc"`), so every
window handed to it is exactly its `nb_max_samples` long and that is checked: no random crop can happen.
A short tail is repeat-padded by us. Clip embedding = mean of L2-normalised window embeddings, renormalised.
CLAP score = mean cosine(prompt, clip), always reported beside the real-holdout and shuffled-prompt baselines.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lofi_lora.data.audio import resample, to_channels
from lofi_lora.core.errors import EmbeddingUnavailable

log = logging.getLogger(__name__)

WINDOW_S = 10.0
SAMPLE_RATE = 48000
MIN_TAIL_S = 5.0


def cut_windows(y: np.ndarray, window: int, min_tail: int) -> list[np.ndarray]:
    """Non-overlapping windows of exactly `window` samples; a tail >= min_tail (or a clip shorter than one
    window) is repeat-padded to full length, a shorter tail is dropped."""
    if y.size == 0:
        raise ValueError("empty audio")
    out = [y[s:s + window] for s in range(0, y.size - window + 1, window)]
    tail = y[len(out) * window:]
    if tail.size and (not out or tail.size >= min_tail):
        out.append(np.resize(tail, window))  # np.resize repeats the data
    return out


class ClapModelLocal:
    """A CLAP model and processor loaded only from a local folder (no download), with a tokenizer guard."""

    def __init__(self, path: str | Path | None, device: str = "cpu", min_vocab: int = 1000, batch_size: int = 8,
                 metric_id: str = "clap_score") -> None:
        if not path:
            raise EmbeddingUnavailable(metric_id, "no CLAP weights configured (eval.clap_path is null)")
        path = Path(path)
        if not (path / "config.json").is_file():
            raise EmbeddingUnavailable(metric_id, f"no transformers CLAP folder at {path} (config.json missing)")
        from transformers import ClapModel, ClapProcessor

        try:
            self.model = ClapModel.from_pretrained(str(path), local_files_only=True).eval().to(device)
            self.processor = ClapProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise EmbeddingUnavailable(metric_id, f"cannot load CLAP from {path}: {e}") from e
        tok = self.processor.tokenizer
        if len(tok) < min_vocab:  # an offline tokenizer can come back silently empty
            raise EmbeddingUnavailable(metric_id, f"{path}: tokenizer has {len(tok)} tokens (< {min_vocab}); "
                                                  "it is not a real CLAP tokenizer")
        fe = self.processor.feature_extractor
        if int(fe.sampling_rate) != SAMPLE_RATE:
            raise EmbeddingUnavailable(metric_id, f"{path}: feature extractor expects {fe.sampling_rate} Hz, "
                                                  f"not {SAMPLE_RATE}")
        self.window = int(fe.nb_max_samples)
        if self.window != int(WINDOW_S * SAMPLE_RATE):
            raise EmbeddingUnavailable(metric_id, f"{path}: processor window is {self.window} samples, not 10 s")
        self.path, self.device, self.batch_size = path, device, batch_size
        self.model_id = path.name

    def describe(self) -> dict[str, Any]:
        import transformers

        return {"clap_model": str(self.path), "clap_window_s": WINDOW_S, "clap_sample_rate": SAMPLE_RATE,
                "transformers": transformers.__version__}

    @staticmethod
    def _pooled(out: Any):
        return out.pooler_output if hasattr(out, "pooler_output") else out  # transformers 5 vs 4

    def embed_audio_windows(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """[n_windows, d] L2-normalised embeddings of fixed 10 s mono 48 kHz windows."""
        import torch

        audio = np.asarray(audio, dtype=np.float32)
        y = resample(to_channels(audio[None] if audio.ndim == 1 else audio, 1), int(sample_rate), SAMPLE_RATE)[0]
        wins = cut_windows(y, self.window, int(MIN_TAIL_S * SAMPLE_RATE))
        embs = []
        for i in range(0, len(wins), self.batch_size):
            batch = wins[i:i + self.batch_size]
            assert all(w.size == self.window for w in batch)  # never lets the processor crop or pad
            inp = self.processor.feature_extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            with torch.no_grad():
                e = self._pooled(self.model.get_audio_features(**{k: v.to(self.device) for k, v in inp.items()}))
            embs.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu().numpy())
        return np.concatenate(embs, axis=0)

    def embed_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """One clip embedding [d]: mean of the window embeddings, renormalised."""
        w = self.embed_audio_windows(audio, sample_rate).mean(axis=0)
        return w / (np.linalg.norm(w) or 1.0)

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(prompts), self.batch_size):
            inp = self.processor.tokenizer(list(prompts[i:i + self.batch_size]), padding=True, truncation=True,
                                           return_tensors="pt")
            with torch.no_grad():
                e = self._pooled(self.model.get_text_features(**{k: v.to(self.device) for k, v in inp.items()}))
            out.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu().numpy())
        return np.concatenate(out, axis=0)


def cosine_score(audio_emb: np.ndarray, text_emb: np.ndarray, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Mean cosine of row-paired embeddings, with std and a bootstrap 95 % CI over pairs."""
    a = audio_emb / np.linalg.norm(audio_emb, axis=1, keepdims=True)
    t = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
    cos = (a * t).sum(axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    boots = cos[rng.integers(0, len(cos), size=(n_boot, len(cos)))].mean(axis=1)
    return {"mean": float(cos.mean()), "std": float(cos.std(ddof=1)) if len(cos) > 1 else 0.0,
            "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))], "n": int(len(cos))}


def shuffled_pairs(prompts: Sequence[str], seed: int = 0) -> list[int]:
    """A seeded permutation that pairs each item with another item's prompt where the prompts allow it."""
    n = len(prompts)
    rng = np.random.default_rng(seed)
    perm = list(rng.permutation(n))
    for i in range(n):  # swap away fixed points / same-text pairs when a partner exists
        if prompts[perm[i]] == prompts[i]:
            for j in range(n):
                if prompts[perm[j]] != prompts[i] and prompts[perm[i]] != prompts[j]:
                    perm[i], perm[j] = perm[j], perm[i]
                    break
    return [int(p) for p in perm]


def clap_scores(clap: ClapModelLocal, generated: Sequence[tuple[np.ndarray, int]], gen_prompts: Sequence[str],
                holdout: Sequence[tuple[np.ndarray, int]] | None = None,
                holdout_captions: Sequence[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """CLAP score of generated clips vs their prompts, with the shuffled-prompt floor and real-holdout ceiling."""
    if len(generated) != len(gen_prompts):
        raise ValueError(f"{len(generated)} clips but {len(gen_prompts)} prompts")
    a = np.stack([clap.embed_audio(x, sr) for x, sr in generated])
    t = clap.embed_text(list(gen_prompts))
    res = {"clap_score": cosine_score(a, t, seed),
           "clap_score_shuffled": cosine_score(a, t[shuffled_pairs(gen_prompts, seed)], seed)}
    if holdout:
        ha = np.stack([clap.embed_audio(x, sr) for x, sr in holdout])
        res["clap_score_holdout"] = cosine_score(ha, clap.embed_text(list(holdout_captions or [])), seed)
    return res
