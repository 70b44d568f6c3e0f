"""The parameters a stage runs on: params.yaml (composed from conf/) checked against `lofi_lora.core.schema` at load.

`load_config` turns a composed config into a typed one, or raises a ConfigError that names the key, the value and
what is allowed: an unknown or mistyped key, a missing key, a wrong type or a value out of its domain stops the
stage before it reads any data or model. `compose_config` composes conf/ with Hydra's compose API, as DVC does
for params.yaml, for code that runs outside a stage (tests, benchmarks).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lofi_lora.core import schema
from lofi_lora.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]


def load_config(raw: Any) -> DictConfig:
    """`raw` (a DictConfig or dict shaped like params.yaml) as a typed, checked config."""
    plain = OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else raw
    if not isinstance(plain, dict):
        raise ConfigError(f"the parameters must be a mapping of sections, got {type(plain).__name__}")
    _check_keys(schema.Params, plain, "")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema.Params), plain)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"`{key}`: {str(e).splitlines()[0]}") from None
    _check_values(schema.Params, cfg, "")
    _check_adapter_sections(cfg)
    return cfg


def _check_adapter_sections(cfg: DictConfig) -> None:
    """Each adapter type reads its own section (`adapter.lokr`) and no other: set exactly the chosen one."""
    chosen = cfg.adapter.type
    for name in schema.ADAPTER_TYPES:
        if name not in cfg.adapter:
            continue
        if name == chosen and cfg.adapter[name] is None:
            raise ConfigError(f"`adapter.{name}` is null but adapter.type={chosen} needs it (conf/adapter/{name}.yaml)")
        if name != chosen and cfg.adapter[name] is not None:
            raise ConfigError(f"`adapter.{name}` is set but adapter.type={chosen} does not read it; "
                              f"select the group (`adapter={chosen}`) instead of setting adapter.type alone")
    if chosen == "lokr" and cfg.lora.rslora:
        raise ConfigError("`lora.rslora` = true: adapter.type=lokr has no rsLoRA scale (alpha/r); set it false")


def compose_config(overrides: Sequence[str] = (), root: Path = REPO_ROOT) -> DictConfig:
    """conf/ composed with Hydra overrides and resolved (what params.yaml would hold), then `load_config`."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(root / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    return load_config(OmegaConf.to_container(cfg, resolve=True))


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _dataclass_of(hint: Any) -> tuple[type | None, bool]:
    """(the dataclass a field holds, whether it is a dict of them); None for plain values."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if dataclasses.is_dataclass(hint):
        return hint, False
    if typing.get_origin(hint) is dict and dataclasses.is_dataclass(args[-1]):
        return args[-1], True
    if typing.get_origin(hint) is typing.Union and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0], False
    return None, False


def _check_keys(cls: type, node: dict, prefix: str) -> None:
    """Every key of `node` is in the schema and every schema key is in `node` (names both, with a suggestion)."""
    fields = _fields(cls)
    for k in node:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f"; did you mean `{prefix}{close[0]}`?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"`{prefix}{k}` is not a parameter{hint} (schema: lofi_lora.core.schema.{cls.__name__})")
    for name, (_, hint) in fields.items():
        if name not in node:
            raise ConfigError(f"`{prefix}{name}` is missing: set it in conf/ and recompose params.yaml "
                              "(`python -m lofi_lora.core.params`)")
        sub, is_dict = _dataclass_of(hint)
        value = node[name]
        if sub is None or value is None or not isinstance(value, dict):
            continue  # a wrong type is reported by the typed merge
        for k, v in (value.items() if is_dict else [(None, value)]):
            if isinstance(v, dict):
                _check_keys(sub, v, f"{prefix}{name}." + (f"{k}." if is_dict else ""))


def _check_values(cls: type, node: DictConfig, prefix: str) -> None:
    """Each value against its field's Rule; `???` values are left to the code that needs them."""
    for name, (f, hint) in _fields(cls).items():
        if OmegaConf.is_missing(node, name):
            continue
        value = node[name]
        sub, is_dict = _dataclass_of(hint)
        if sub is not None and value is not None:
            for k, v in (value.items() if is_dict else [(None, value)]):
                _check_values(sub, v, f"{prefix}{name}." + (f"{k}." if is_dict else ""))
            continue
        rule = f.metadata.get("rule")
        plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if rule is not None and not rule.accepts(plain):
            bad = [i for i, v in enumerate(plain) if not rule.accepts(v)] if isinstance(plain, list) else []
            if bad:  # name the entry, not only the list
                raise ConfigError(f"`{prefix}{name}[{bad[0]}]` = {plain[bad[0]]!r}: must be {rule.describe()}")
            raise ConfigError(f"`{prefix}{name}` = {plain!r}: must be {rule.describe()}")


def require(cfg: DictConfig, key: str) -> Any:
    """Return `cfg.<key>`; a missing, `???` or null value is a ConfigError naming the key from the config's root
    (`model.path`, also when `cfg` is the `model` section)."""
    full = _full_key(cfg, key)
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as e:  # MissingMandatoryValue, InterpolationResolutionError
        raise ConfigError(f"parameter `{full}` is required but not set ({e.__class__.__name__}); "
                          f"set it in conf/ or with `-S {full}=...`") from e
    if value is None:
        raise ConfigError(f"parameter `{full}` is required but is null; set it in conf/ or with `-S {full}=...`")
    return value


def _full_key(cfg: Any, key: str) -> str:
    prefix = cfg._get_full_key(None) if isinstance(cfg, DictConfig) else ""
    return f"{prefix}.{key}" if prefix else key


def to_plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> plain Python containers (resolved)."""
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def config_hash(cfg: Any, exclude: Iterable[str] = ()) -> str:
    """Short stable hash of a config section (or any JSON-able value), minus keys that may change freely."""
    plain = to_plain(cfg)
    if isinstance(plain, dict):
        plain = {k: v for k, v in plain.items() if k not in set(exclude)}
    blob = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
