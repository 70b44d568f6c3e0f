"""Which entries of the raw folder may be read at all: regular files, and symlinks only while they stay inside.

A symlink loop, a symlink that leaves the raw folder (its target would be read, hashed and cached by DVC, then
pushed), a broken symlink and a non-regular file (a FIFO blocks every reader) are refused with a reason; stage
ingest puts them in quarantine.json. DVC stops on the same entries (`dvc add` raises ELOOP/ENOENT, hangs on a
FIFO, and copies an escaping link's target into its cache), so `python -m lofi_lora.ingest.rawfiles data/raw/local`
adds them to the repo's .dvcignore before `dvc add`.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Refused:
    path: Path
    reason: str  # symlink_loop | symlink_escape | broken_symlink | not_a_file
    detail: str


def _link_problem(p: Path, base: str) -> tuple[str, str] | None:
    target = os.readlink(p)
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink_loop", f"symlink to {target!r} loops ({e.strerror})"
        return "broken_symlink", f"symlink to {target!r}: {e.strerror}"
    real = os.path.realpath(p)
    if os.path.commonpath([real, base]) != base:
        return "symlink_escape", f"symlink to {target!r} leaves the raw folder (resolves to {real})"
    return None


def scan(raw_dir: str | Path) -> tuple[list[Path], list[Refused]]:
    """(readable audio candidates, refused entries) under raw_dir, both sorted; hidden names are skipped.

    Symlinks are followed only when their target is inside raw_dir; a folder reached twice (a link back to an
    ancestor) is a loop.
    """
    raw_dir = Path(raw_dir)
    base = os.path.realpath(raw_dir)
    files: list[Path] = []
    refused: list[Refused] = []
    seen: set[str] = set()

    def walk(d: Path) -> None:
        seen.add(os.path.realpath(d))
        for e in sorted(os.scandir(d), key=lambda e: e.name):
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            if e.is_symlink():
                why = _link_problem(p, base)
                if why is None and e.is_dir() and os.path.realpath(p) in seen:
                    why = ("symlink_loop", f"symlink to {os.readlink(p)!r} leads back to a folder already listed")
                if why:
                    refused.append(Refused(p, *why))
                    continue
            if e.is_dir():
                walk(p)
            elif e.is_file():
                files.append(p)
            else:
                refused.append(Refused(p, "not_a_file", "not a regular file (FIFO, socket or device)"))

    walk(raw_dir)
    return files, refused


def _ignore_pattern(rel: str) -> str:
    """A .dvcignore (gitignore syntax) pattern matching exactly the path `rel`, whatever characters it holds."""
    out = "".join("\\" + c if c in "\\*?[]!#" else c for c in rel)
    return "/" + (out[:-1] + "[ ]" if out.endswith(" ") else out)  # DVC strips a trailing space, even escaped


def ignore_refused(raw_dir: str | Path, root: str | Path = ".") -> list[Refused]:
    """Append a .dvcignore pattern for every refused entry under raw_dir (once); returns the refused entries."""
    _, refused = scan(raw_dir)
    dvcignore = Path(root) / ".dvcignore"
    lines = dvcignore.read_text(encoding="utf-8").splitlines() if dvcignore.exists() else []
    new = [pat for r in refused
           if (pat := _ignore_pattern(os.path.relpath(r.path, root).replace(os.sep, "/"))) not in lines]
    if new:
        text = "\n".join(lines + ["# refused by lofi_lora.ingest.rawfiles (symlink loops/escapes, FIFOs); see quarantine.json"]
                         + new) + "\n"
        dvcignore.write_text(text, encoding="utf-8")
    return refused


def unignored(raw_dir: str | Path, root: str | Path = ".") -> list[Refused]:
    """Refused entries under raw_dir that the repo's .dvcignore does not list: the raw folder changed since
    `python -m lofi_lora.ingest.rawfiles` last ran (DVC hangs on such a FIFO and fails on such a loop). Empty when
    raw_dir is not inside `root` (DVC does not track it there)."""
    rel = os.path.relpath(raw_dir, root)
    if rel.startswith("..") or os.path.isabs(rel) or not Path(raw_dir).is_dir():
        return []
    _, refused = scan(raw_dir)
    dvcignore = Path(root) / ".dvcignore"
    lines = set(dvcignore.read_text(encoding="utf-8").splitlines()) if dvcignore.exists() else set()
    return [r for r in refused if _ignore_pattern(os.path.relpath(r.path, root).replace(os.sep, "/")) not in lines]


def unignored_message(raw_dir: str | Path, entries: list[Refused]) -> str:
    """One line naming the entries (the first few) and the command that adds them to .dvcignore."""
    names = ", ".join(f"{r.path} ({r.reason})" for r in entries[:3]) + (", ..." if len(entries) > 3 else "")
    return (f"{raw_dir} changed since `python -m lofi_lora.ingest.rawfiles {raw_dir}` last ran: {len(entries)} entr"
            f"{'y' if len(entries) == 1 else 'ies'} DVC cannot read ({names}) not in .dvcignore; run it again")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lofi_lora.ingest.rawfiles",
                                 description="List raw entries DVC and ingest refuse and add them to .dvcignore.")
    ap.add_argument("raw_dir", help="e.g. data/raw/local")
    ap.add_argument("--root", default=".", help="the repo root holding .dvcignore (default: .)")
    args = ap.parse_args(argv)
    if not Path(args.raw_dir).is_dir():
        print(f"{args.raw_dir}: not a folder", file=sys.stderr)
        return 2
    for r in ignore_refused(args.raw_dir, args.root):
        print(f"{r.reason}\t{r.path}\t{r.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
