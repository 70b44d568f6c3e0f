"""Access to the parameters a stage runs on (params.yaml, composed from conf/), with errors that name the key."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from lofi_lora.errors import ConfigError


def require(cfg: DictConfig, key: str) -> Any:
    """Return `cfg.<key>`; a missing or `???` value is a ConfigError naming the key."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as e:  # MissingMandatoryValue, InterpolationResolutionError
        raise ConfigError(f"parameter `{key}` is required but not set ({e.__class__.__name__}); "
                          f"set it in conf/ or with `-S {key}=...`") from e
    if value is None:
        raise ConfigError(f"parameter `{key}` is required but is null; set it in conf/ or with `-S {key}=...`")
    return value


def to_plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> plain Python containers (resolved)."""
    if isinstance(cfg, (DictConfig,)) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def fingerprint(cfg: Any, exclude: Iterable[str] = ()) -> str:
    """Short stable hash of a config section, minus keys that may change without invalidating results."""
    plain = to_plain(cfg)
    if isinstance(plain, dict):
        plain = {k: v for k, v in plain.items() if k not in set(exclude)}
    blob = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
