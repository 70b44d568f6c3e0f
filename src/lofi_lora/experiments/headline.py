"""The few figures a sweep table shows, read in one place so the metrics files' key names can change here alone."""
from __future__ import annotations

from typing import Any, Callable

from lofi_lora.metrics import METRICS

# column -> (file under paths.metrics, dotted key, better): the only place that knows the metrics files' layout;
# an eval column's better is its registered metric's direction (lofi_lora.metrics)
HEADLINES: dict[str, tuple[str, str, str]] = {
    "train_loss": ("train.json", "train.loss_smoothed", "min"),
    "best_step": ("eval.json", "eval.best_step", ""),
    **{column: ("eval.json", f"eval.{metric_id}", METRICS[metric_id].direction) for column, metric_id in (
        ("val_loss", "val_loss"),
        ("fd", "fd_logmel128_v1"),      # log-mel FD, always computed offline
        ("fad_vggish", "fad_vggish"),   # only with eval.embedding=vggish
        ("clap", "clap_score"))},       # only with eval.clap_path
    "int4_cosine": ("export.json", "export.int4.cosine", "max"),  # INT4 ONNX vs PyTorch FP32
    "kad": ("eval.json", "eval.kad_logmel128_v1", "min"),
    # bootstrap 95% intervals (eval.interval) and the best checkpoint minus the base, paired (not scores themselves)
    **{f"{column}_{end}": ("eval.json", f"eval.{key}_{end}", "") for column, key in (
        ("fd", "fd_logmel128_v1"), ("kad", "kad_logmel128_v1")) for end in ("low", "high")},
    **{f"{column}_vs_base{end}": ("eval.json", f"eval.vs_base.{key}{end}", "") for column, key in (
        ("fd", "fd_logmel128_v1"), ("kad", "kad_logmel128_v1")) for end in ("", "_low", "_high")},
}
# columns with an interval: the sweep table marks which differences between jobs are beyond it
INTERVALS = ("fd", "kad")


def headline_metrics(read: Callable[[str], Any]) -> dict[str, Any]:
    """`read(name)` returns the parsed metrics file `name` (e.g. "eval.json") or None; every column, None if absent."""
    files: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for column, (name, key, _) in HEADLINES.items():
        if name not in files:
            files[name] = read(name)
        value = files[name]
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[column] = value
    return out


def better(column: str) -> str:
    """"min", "max", or "" for columns that are not scores."""
    return HEADLINES[column][2]
