"""The held-out split as evaluate and export score against it: its rows with their audio, and a fixed, seeded
prompt set drawn from them (captions and metas of held-out clips)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lofi_lora.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)


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


def _split(dataset_dir: Path, split: str):
    from datasets import Audio, load_from_disk

    if not dataset_dir.is_dir():
        raise DataError(f"{dataset_dir}: dataset folder is missing: run stage dataset first")
    dd = load_from_disk(str(dataset_dir))
    if split not in dd:
        raise DataError(f"{dataset_dir}: no `{split}` split (splits: {list(dd)})")
    ho = dd[split]
    if "audio" in ho.column_names and isinstance(ho.features["audio"], Audio):
        ho = ho.cast_column("audio", Audio(decode=False))
    if len(ho) == 0:
        raise DataError(f"{dataset_dir}: the {split} split is empty; evaluation needs held-out clips")
    return ho


def _audio_path(row: dict, clips_dir: Path) -> str:
    a = row.get("audio")
    if isinstance(a, dict) and a.get("path") and Path(a["path"]).is_file():
        return str(a["path"])
    p = clips_dir / "wav" / f"{row['clip_id']}.wav"
    if not p.is_file():
        raise DataError(f"clip {row['clip_id']}: audio not found ({a!r}, {p})")
    return str(p)


def holdout_rows(dataset_dir: Path, clips_dir: Path, split: str = "holdout") -> list[dict]:
    """Rows of `split` (once per clip, repeats dropped) sorted by clip_id with a resolved `audio_path`."""
    rows = sorted({str(r["clip_id"]): dict(r) for r in _split(dataset_dir, split)}.values(),
                  key=lambda r: str(r["clip_id"]))
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
