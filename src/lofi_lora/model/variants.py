"""What a model variant means: the one table that evaluate, train, export and the native converter read."""
from __future__ import annotations

VARIANTS = ("turbo", "sft", "base")
