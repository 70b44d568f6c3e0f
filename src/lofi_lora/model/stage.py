"""Stage `base_model`: the tiny ACE-Step 1.5 pipeline built offline, or a real one verified in place."""
from __future__ import annotations

from typing import Any


def run_base_model(cfg: Any) -> dict:
    """Write `paths.base_model` (pipeline or manifest of the real weights); returns headline numbers."""
    from lofi_lora.model.load import write_base_model

    return write_base_model(cfg)
