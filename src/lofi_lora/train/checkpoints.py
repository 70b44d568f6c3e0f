"""Training checkpoints: atomic folders, a hashed manifest, verification, retention and the choice to resume.

Layout (`models/lora/checkpoints/`):
    checkpoint-<step:06d>/pytorch_lora_weights.safetensors   adapter, diffusers format (lofi_lora.train.adapters)
    checkpoint-<step:06d>/training_state.pt                  optimizer, scheduler, RNG states, data position
    manifest.json  {"version":1,"checkpoints":[{"step","path","files":{name: sha256},"config_hash",
                    "scores":{"train_loss": ...}}]}   (no timestamp: a rerun must hash the same under DVC)

A folder is built under a temp name and renamed whole, then the manifest is rewritten atomically, then old folders
are pruned: a crash at any point leaves every manifest entry complete. A persisted checkpoint folder can
reach another experiment of a queued sweep, so an entry whose config hash differs is never resumed.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

from lofi_lora.core.errors import CheckpointError
from lofi_lora.core.fsutil import atomic_dir, atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE_FILE = "training_state.pt"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


class CheckpointStore:
    """The checkpoint folder of one training run."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- manifest -----------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            return {"version": 1, "checkpoints": []}
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
            raise CheckpointError(f"{path}: expected {{'version': 1, 'checkpoints': [...]}}")
        return data

    def entries(self) -> list[dict[str, Any]]:
        return sorted(self.manifest()["checkpoints"], key=lambda e: int(e["step"]))

    def _write_manifest(self, entries: list[dict[str, Any]]) -> None:
        atomic_write_json(self.root / MANIFEST, {"version": 1, "checkpoints": sorted(entries, key=lambda e: e["step"])})

    # -- save ---------------------------------------------------------------------------------------------------
    def save(self, step: int, write: Callable[[Path], None], config_hash: str, scores: dict[str, float],
             keep_last: int, best_metric: str | None = None) -> dict[str, Any]:
        """Build `checkpoint-<step>` with `write(tmp_dir)`, record it in the manifest, prune old ones."""
        path = self.root / checkpoint_name(step)
        with atomic_dir(path) as tmp:
            write(tmp)
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        entry = {"step": int(step), "path": str(path), "files": files, "config_hash": config_hash,
                 "scores": {k: float(v) for k, v in scores.items()}}
        entries = [e for e in self.manifest()["checkpoints"] if int(e["step"]) != step] + [entry]
        self._write_manifest(entries)
        self.prune(keep_last, best_metric)
        log.info("checkpoint %s saved (%d files)", path.name, len(files))
        return entry

    # -- retention ----------------------------------------------------------------------------------------------
    def best(self, entries: list[dict[str, Any]] | None = None, metric: str | None = None,
             mode: str = "min") -> dict[str, Any] | None:
        """Best entry by `metric`; default: `val_loss` when evaluation has scored any, else smoothed `train_loss`."""
        entries = self.entries() if entries is None else entries
        if metric is None:
            metric = "val_loss" if any("val_loss" in e.get("scores", {}) for e in entries) else "train_loss"
        scored = [e for e in entries if metric in e.get("scores", {})]
        if not scored:
            return None
        pick = min if mode == "min" else max
        return pick(scored, key=lambda e: (float(e["scores"][metric]), -int(e["step"])))

    def prune(self, keep_last: int, best_metric: str | None = None) -> list[int]:
        """Keep the newest `keep_last` entries and the best one; delete the others and unlisted folders."""
        entries = self.entries()
        keep = {int(e["step"]) for e in entries[-max(int(keep_last), 1):]}
        best = self.best(entries, best_metric)
        if best is not None:
            keep.add(int(best["step"]))
        removed = [int(e["step"]) for e in entries if int(e["step"]) not in keep]
        if removed:
            self._write_manifest([e for e in entries if int(e["step"]) in keep])
        listed = {checkpoint_name(s) for s in keep}
        for d in self.root.glob("checkpoint-*"):
            if d.is_dir() and d.name not in listed:
                shutil.rmtree(d, ignore_errors=True)
        return removed

    # -- verification and resume --------------------------------------------------------------------------------
    def verify(self, entry: dict[str, Any]) -> Path:
        """Raise CheckpointError unless every listed file exists with its recorded sha256."""
        path = self.root / checkpoint_name(int(entry["step"]))
        if not path.is_dir():
            raise CheckpointError(f"{path}: checkpoint folder is missing")
        for name, digest in entry.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise CheckpointError(f"{f}: file listed in {MANIFEST} is missing")
            if sha256_file(f) != digest:
                raise CheckpointError(f"{f}: sha256 differs from {MANIFEST} (corrupt or modified)")
        if STATE_FILE not in entry.get("files", {}):
            raise CheckpointError(f"{path}: {STATE_FILE} is not listed in {MANIFEST}")
        return path

    def select(self, config_hash: str, resume_from: int | None = None,
               max_step: int | None = None) -> dict[str, Any] | None:
        """The entry to resume from: `resume_from` exactly (error if unusable), else the newest one that verifies.

        `max_step` (train.max_steps) excludes later checkpoints: lowering max_steps resumes below it.
        """
        entries = self.entries()
        if resume_from is not None and max_step is not None and int(resume_from) > max_step:
            raise CheckpointError(f"train.resume_from={resume_from} is beyond train.max_steps={max_step}")
        if max_step is not None:
            entries = [e for e in entries if int(e["step"]) <= max_step]
        if resume_from is not None:
            match = [e for e in entries if int(e["step"]) == int(resume_from)]
            if not match:
                steps = [int(e["step"]) for e in entries]
                raise CheckpointError(f"train.resume_from={resume_from}: no such checkpoint in {self.root} "
                                      f"(available steps: {steps or 'none'})")
            entry = match[0]
            self.verify(entry)
            if entry.get("config_hash") != config_hash:
                raise CheckpointError(f"{checkpoint_name(int(resume_from))}: config hash {entry.get('config_hash')} "
                                      f"!= current {config_hash}; it was trained with other model/lora/train "
                                      f"parameters or data and cannot be resumed")
            return entry
        for entry in reversed(entries):
            name = checkpoint_name(int(entry["step"]))
            if entry.get("config_hash") != config_hash:
                log.warning("%s belongs to another config (hash %s != %s): not resumed", name,
                            entry.get("config_hash"), config_hash)
                continue
            try:
                self.verify(entry)
            except CheckpointError as e:
                log.warning("skipping corrupt checkpoint: %s", e)
                continue
            return entry
        return None

    def discard(self, config_hash: str, after_step: int | None = None) -> int:
        """Delete checkpoints of another config, and those after `after_step` (the continuation a resume abandons),
        so that retention never mixes two runs. Returns how many were deleted."""
        entries = self.entries()
        keep = [e for e in entries if e.get("config_hash") == config_hash
                and (after_step is None or int(e["step"]) <= after_step)]
        for e in entries:
            if e not in keep:
                shutil.rmtree(self.root / checkpoint_name(int(e["step"])), ignore_errors=True)
        if len(keep) != len(entries):
            self._write_manifest(keep)
        return len(entries) - len(keep)
