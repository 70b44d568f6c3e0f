"""Stage `dataset`: the HF dataset and the cache of latents and conditions that train and evaluate read.

`_rows` lives here, in module `lofi_lora.dataset.stage`: HF datasets hashes a generator's module and code into the
dataset's `_fingerprint` (state.json, a DVC output), so moving it would change the output's bytes.
"""
from __future__ import annotations

from typing import Iterator


def _rows(rows: list[dict]) -> Iterator[dict]:
    yield from rows
