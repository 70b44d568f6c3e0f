"""The few figures a sweep table shows, read in one place so the metrics files' key names can change here alone."""
from __future__ import annotations

from typing import Any, Callable

# column -> (file under paths.metrics, dotted key, better): the only place that knows the metrics files' layout
HEADLINES: dict[str, tuple[str, str, str]] = {
    "train_loss": ("train.json", "train.loss_smoothed", "min"),
    "best_step": ("eval.json", "eval.best_step", ""),
    "val_loss": ("eval.json", "eval.val_loss", "min"),
    "fd": ("eval.json", "eval.fd_logmel128_v1", "min"),          # log-mel FD, always computed offline
    "fad_vggish": ("eval.json", "eval.fad_vggish", "min"),       # only with eval.embedding=vggish
    "clap": ("eval.json", "eval.clap_score", "max"),             # only with eval.clap_path
    "int4_cosine": ("export.json", "export.int4.cosine", "max"),  # INT4 ONNX vs PyTorch FP32
}


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
