"""Stage `check` (stages/check.py), the first of the pipeline, which every other stage depends on.

A stage validates params.yaml itself, but only after DVC has removed that stage's outputs, so a refused value
(`dvc exp run -S lora.alpha=-1`) used to cost the trained adapter. This stage depends on the whole params.yaml and
fails on a bad value (one line naming the key), so DVC stops before it removes anything else. It also refuses when
the raw folder holds entries DVC cannot read that .dvcignore does not list yet (rawfiles.py). Its one output is
always the same bytes, so a valid change of params reruns no stage that does not read it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lofi_lora.ingest import rawfiles
from lofi_lora.core.config import load_config
from lofi_lora.core.errors import DataError
from lofi_lora.core.fsutil import atomic_write_text

OUTPUT = Path("data/params.ok")


def run_check(params: Any, output: Path = OUTPUT) -> dict[str, Any]:
    """Raise ConfigError/DataError (one line) when `params` (params.yaml's content) or the raw folder would fail a
    stage; else write `output`."""
    cfg = load_config(params)
    stale = rawfiles.unignored(cfg.data.raw_dir)
    if stale:
        raise DataError(rawfiles.unignored_message(cfg.data.raw_dir, stale))
    atomic_write_text(output, "params.yaml is valid (stage check; the content never changes)\n")
    return {"params": "valid"}
