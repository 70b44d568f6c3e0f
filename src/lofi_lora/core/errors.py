"""Errors that say what went wrong, where, and how to fix it."""


class LofiLoraError(Exception):
    """Base class: every expected failure of the pipeline."""


class ConfigError(LofiLoraError):
    """A parameter is missing, of the wrong type or inconsistent (names the key)."""


class DataError(LofiLoraError):
    """Input data or metadata is malformed (names the file, key and reason)."""


class ModelError(LofiLoraError):
    """Model weights are missing or do not match what the config promises."""


class EmbeddingUnavailable(ModelError):
    """An audio embedding cannot be computed here (weights not configured, missing or invalid): `reason` says why."""

    def __init__(self, metric_id: str, reason: str):
        super().__init__(f"{metric_id}: unavailable: {reason}")
        self.metric_id = metric_id
        self.reason = reason


class CheckpointError(LofiLoraError):
    """A checkpoint is missing, corrupt or belongs to another configuration."""


class ExportParityError(LofiLoraError):
    """An exported model misses its parity tolerance against PyTorch."""
