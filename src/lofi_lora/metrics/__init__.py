"""The registered evaluation metrics: one row each (id, direction, label, unit); evaluate/stage.py produces their
records, and the report, the headline and the sweep table read direction and label from here."""
from __future__ import annotations

from lofi_lora.core.records import Metric

_ROWS = (
    Metric("val_loss", "min", "validation flow-matching loss (holdout cache, fixed t and noise)"),
    Metric("fd_logmel128_v1", "min",
           "FD on handcrafted log-mel statistics (not FAD/VGGish; not comparable to published FAD)"),
    Metric("fd_logmel128_v1_inf", "min", "the same, extrapolated to infinitely many clips (FD-inf)"),
    Metric("fad_vggish", "min", "FAD, VGGish embedding"),
    Metric("fad_vggish_inf", "min", "FAD-inf, VGGish embedding"),
    Metric("fad_clap", "min", "FAD, CLAP audio embedding"),
    Metric("fad_clap_inf", "min", "FAD-inf, CLAP audio embedding"),
    Metric("kad_logmel128_v1", "min",
           "KAD (unbiased kernel MMD^2, RBF bandwidth fixed from the reference) on the log-mel statistics"),
    Metric("kad_vggish", "min", "KAD on VGGish embeddings"),
    Metric("kad_clap", "min", "KAD on CLAP audio embeddings"),
    Metric("clap_score", "max", "CLAP score: mean cosine(prompt, sample)", "cosine"),
    Metric("clap_score_shuffled", "max", "CLAP score with shuffled prompts (floor)", "cosine"),
    Metric("clap_score_holdout", "max", "CLAP score of holdout clips vs their captions (ceiling)", "cosine"),
)
METRICS: dict[str, Metric] = {m.id: m for m in _ROWS}


def metric(metric_id: str) -> Metric:
    """The registered metric `metric_id` (a KeyError names an unregistered one)."""
    try:
        return METRICS[metric_id]
    except KeyError:
        raise KeyError(f"metric {metric_id!r} is not registered in lofi_lora.metrics.METRICS") from None
