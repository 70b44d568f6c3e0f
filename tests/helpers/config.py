"""The project's real configuration for tests: conf/ composed by Hydra's compose API, outputs under a test folder."""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lofi_lora.core.config import REPO_ROOT, compose_config, load_config

KEEP = {"presets"}  # repo inputs the tests read in place


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> dict:
    return OmegaConf.to_container(compose_config(overrides))


def real_config(root: Path, *overrides: str, **sections: dict[str, Any]):
    """conf/ composed with Hydra `overrides`, every path of `paths`/`data` (and `model.path`,
    `audio.quality_scores` when they point there) moved under `root` (repo inputs such as presets/ made absolute),
    then `sections` merged in
    (e.g. `train={"max_steps": 3}`) and the whole checked by the schema, as a stage receives it."""
    plain = copy.deepcopy(_composed(tuple(overrides)))
    moved = {}
    for key, value in plain["paths"].items():
        moved[value] = str((REPO_ROOT if key in KEEP else Path(root)) / value)
    plain["paths"] = {k: moved.get(v, v) for k, v in plain["paths"].items()}
    plain["data"] = {k: str(Path(root) / v) for k, v in plain["data"].items()}
    plain["audio"]["quality_scores"] = str(Path(root) / plain["audio"]["quality_scores"])
    plain["model"]["path"] = moved.get(plain["model"]["path"], plain["model"]["path"])
    if plain["model"]["source"] == "pretrained":  # committed weights: read from the repo, wherever the test runs
        plain["model"]["path"] = str(REPO_ROOT / plain["model"]["path"])
    return changed(plain, **sections)


def changed(cfg, **sections: dict[str, Any]):
    """A copy of `cfg` with `sections` merged in (e.g. `paths={"lora": ...}`), checked by the schema again."""
    plain = OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else cfg
    for name, values in sections.items():
        plain[name] = {**plain[name], **values}
    return load_config(plain)


def real_section(name: str, **values: Any):
    """One section of the real configuration with `values` merged in and checked (for code that takes only it)."""
    return real_config(Path("outputs-unused"), **{name: values})[name]
