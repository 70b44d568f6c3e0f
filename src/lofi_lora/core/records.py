"""A measured figure as one record: what it is (id, direction, label, unit), its value or why it is null, and its
interval where there is one. Evaluate produces records; results, the report, the headline and the sweep table read
them, so no reader parses key suffixes."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Metric:
    """What a figure means. direction: "min" or "max" for a score (a headline figure), "" for a sample size or a
    fit diagnostic."""

    id: str
    direction: str
    label: str
    unit: str = ""


@dataclass(frozen=True)
class Record:
    """One figure of one model: a value, or None with its reason; low/high: an interval (e.g. bootstrap 95%), None
    where there is none."""

    metric: Metric
    value: Any
    reason: str | None = None
    low: float | None = None
    high: float | None = None

    @property
    def id(self) -> str:
        return self.metric.id

    def as_dict(self) -> dict[str, Any]:
        """The JSON form results reads: every field, nulls included."""
        return {**asdict(self.metric), "value": self.value, "reason": self.reason, "low": self.low, "high": self.high}


def flat(records: Iterable[Record]) -> dict[str, Any]:
    """A model's scores as one flat dict (best/scores.json): `<id>`, and `<id>_reason`, `<id>_low`, `<id>_high`
    only where present."""
    out: dict[str, Any] = {}
    for r in records:
        out[r.id] = r.value
        if r.reason:
            out[f"{r.id}_reason"] = r.reason
        out.update({f"{r.id}_{k}": v for k, v in (("low", r.low), ("high", r.high)) if v is not None})
    return out
