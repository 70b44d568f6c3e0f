"""Accounting for many similar problems: one log line with a count and the first few examples, not one per item."""
from __future__ import annotations

import logging
import os
import traceback

EXAMPLES = 3


def log_summary(log: logging.Logger, what: str, examples: list[str], level: int = logging.WARNING) -> None:
    """`what: N (e.g. a; b; c; ...)` once, when there is any."""
    if examples:
        more = "; ..." if len(examples) > EXAMPLES else ""
        log.log(level, "%s: %d (e.g. %s%s)", what, len(examples), "; ".join(examples[:EXAMPLES]), more)


def failure(path: object, step: str, e: BaseException) -> str:
    """One line naming the file, the step and the error; the traceback is printed when LOFI_LORA_DEBUG=1."""
    if os.environ.get("LOFI_LORA_DEBUG") == "1":
        traceback.print_exception(e)
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{path}: {step} failed: {type(e).__name__}: {message}"


def considered(ingest: dict, quarantine: dict) -> int:
    """How many files and entries ingest decided on: each (path, track id) once, a long file's parts as one."""
    return len({(a["path"], a["track_id"]) for a in ingest.get("accepted", [])}
               | {(q["path"], q["track_id"]) for q in quarantine.get("quarantined", [])})
