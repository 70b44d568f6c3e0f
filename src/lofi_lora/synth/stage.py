"""Stage `synth`: the procedural lofi corpus with ground truth, the embedded default data."""
from __future__ import annotations

from typing import Any

from lofi_lora.synth.corpus import generate_corpus


def run_synth(cfg: Any) -> dict:
    """Write the corpus under `paths.synth` and its metadata under `paths.synth_metadata`; returns headline numbers."""
    return generate_corpus(cfg)
