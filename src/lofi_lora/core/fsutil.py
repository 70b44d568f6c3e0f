"""Atomic file output: every file appears whole or not at all (temp file in the same folder, then rename)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.

    `suffix` keeps the extension for writers that infer the format from it (soundfile, ffmpeg).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix + ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    # "\n" line ends on every platform: DVC hashes bytes.
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temp name and swap it in whole; the old folder goes only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # track/clip ids and the file names built from them
_SAFE_NAME = re.compile(SAFE_NAME)


def is_safe_name(name: object) -> bool:
    """True for a string usable as one file name everywhere: no separator, no leading dot, no shell syntax."""
    return isinstance(name, str) and _SAFE_NAME.fullmatch(name) is not None


def path_inside(folder: str | os.PathLike, name: str) -> Path:
    """`folder/name` for a single file name built from validated ids, refused when it could land elsewhere.

    Every writer that names a file after a track or clip id goes through this, so an id that slipped past
    validation upstream (`../../x`, `a/b`, a shell string) can never write outside `folder`.
    """
    from lofi_lora.core.errors import DataError

    folder = Path(folder)
    if not is_safe_name(name):
        raise DataError(f"{folder}: refusing to write {name!r}: a file name must match {SAFE_NAME}")
    out = folder / name
    real, base = os.path.realpath(out), os.path.realpath(folder)
    if os.path.commonpath([real, base]) != base:
        raise DataError(f"{out}: resolves to {real}, outside {base}")
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, naming the file in the error when it is malformed."""
    from lofi_lora.core.errors import DataError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def safetensors_bytes(tensors: Mapping[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file whose bytes depend only on its content.

    safetensors keeps `__metadata__` in a hash map, so the header's key order (and the file's sha256) changes from
    one process to the next; DVC would see a new output on every run. We re-serialise the header with sorted keys;
    the data offsets are relative to the end of the header, so the tensor bytes stay valid.
    """
    from safetensors.torch import save

    raw = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write a reproducible safetensors file atomically."""
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))
