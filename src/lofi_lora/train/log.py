"""Training metrics as they leave the device: a buffer of step values read in one host sync, the smoothed loss,
and the DVCLive history (continued across a resume)."""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from lofi_lora.core.errors import ModelError

EMA_BETA = 0.9  # smoothing of the train loss recorded in checkpoint scores


class MetricsBuffer:
    """Step values (loss, grad norm, lr) kept on the device until `flush` reads them all at once, in step order.

    On CUDA the train step makes no host sync; reading every `log_every` steps gives the same smoothed loss and
    logged values as reading every step.
    """

    def __init__(self, live: Any, log_every: int, max_steps: int, ema_loss: float | None = None,
                 last: dict[str, float] | None = None):
        self.live, self.log_every, self.max_steps = live, log_every, max_steps
        self.ema_loss, self.last = ema_loss, dict(last or {})
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        self.pending.append((step, loss, grad_norm, lr))

    def flush(self) -> None:
        """Read the pending values: finiteness check, smoothed loss, DVCLive rows."""
        if not self.pending:
            return
        values = torch.stack([torch.stack([l.float(), g.float()]) for _, l, g, _ in self.pending]).tolist()
        for (step, _, _, lr), (loss, grad_norm) in zip(self.pending, values):
            if not math.isfinite(loss):
                raise ModelError(f"train loss is {loss} at step {step}; lower train.lr")
            self.ema_loss = loss if self.ema_loss is None else EMA_BETA * self.ema_loss + (1 - EMA_BETA) * loss
            self.last = {"loss": loss, "lr": lr, "grad_norm": grad_norm}
            if self.live is not None and (step % self.log_every == 0 or step == self.max_steps):
                self.live.step = step
                for k, v in self.last.items():
                    self.live.log_metric(k, v)
                self.live.log_metric("loss_smoothed", self.ema_loss)
                self.live.next_step()
        self.pending.clear()


def _trim_history(live_dir: Path, last_step: int) -> None:
    """Drop DVCLive rows logged after the checkpoint we resume from (they are about to be redone)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[0].isdigit() and int(ln.split("\t")[0]) <= last_step]
        tsv.write_text("\n".join(keep) + "\n")


def open_live(live_dir: Path, resumed_step: int | None):
    """A DVCLive logger whose history ends at `resumed_step` (None: a fresh run)."""
    from dvclive import Live

    if resumed_step is not None:
        _trim_history(live_dir, resumed_step)
    return Live(str(live_dir), dvcyaml=False, resume=resumed_step is not None, save_dvc_exp=False)


class LoopClock:
    """Where the train loop's time goes, read only where the host has synced (a CUDA step is asynchronous): the
    first interval (compile and CUDA-graph recording inside it), the steady time per step between syncs, and the
    checkpoint writes, which a benchmark's step does not have (issue 28: the stage against its benchmark)."""

    def __init__(self, step: int) -> None:
        self.t, self.step = time.perf_counter(), step
        self.first_s: float | None = None
        self.rates: list[float] = []
        self.checkpoint_s = 0.0

    def mark(self, step: int) -> None:
        """The host is in sync at `step`: close the interval since the last mark."""
        now = time.perf_counter()
        if step > self.step:
            if self.first_s is None:
                self.first_s = now - self.t
            else:
                self.rates.append((now - self.t) / (step - self.step))
        self.t, self.step = now, step

    def checkpoint(self, seconds: float, step: int) -> None:
        self.checkpoint_s += seconds
        self.t, self.step = time.perf_counter(), step

    def summary(self) -> dict[str, float | None]:
        steady = statistics.median(self.rates) * 1000 if self.rates else None
        return {"first_interval_s": self.first_s, "steady_ms_per_step": steady, "checkpoint_s": self.checkpoint_s}
