"""`python -m lofi_lora.annotate.check`: validate your own music's metadata before running the pipeline.

Checks sources.json and style_mapping.json against their schemas (including the optional per-track `bpm`
and `keyscale`), that every styled track has a licence entry and every preset id exists, and that each
`file` named in sources.json is under the raw folder. Prints each problem once, then their count, and exits 1
if there is any.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lofi_lora.core.errors import DataError
from lofi_lora.data.metadata import SOURCES_FILE, load_metadata
from lofi_lora.data.presets import PresetLibrary


def check(metadata_dir: Path, raw_dir: Path, presets: Path) -> list[str]:
    """Problems found, one line each (empty: all good): the validation stage ingest runs, plus missing files."""
    try:
        meta = load_metadata(metadata_dir, PresetLibrary(presets), raw_dir)
    except DataError as e:
        return [str(e)]
    problems = [str(p) for p in meta.problems]
    problems += [f"{metadata_dir / SOURCES_FILE}: tracks.{tid}.file: {entry['file']} not found under {raw_dir}"
                 for tid, entry in meta.sources.items() if not (raw_dir / entry["file"]).is_file()]
    return list(dict.fromkeys(problems))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lofi_lora.annotate.check", description=__doc__.splitlines()[0])
    ap.add_argument("--metadata-dir", type=Path, default=Path("data/metadata"))
    ap.add_argument("--raw-dir", type=Path, default=Path("data/raw/local"))
    ap.add_argument("--presets", type=Path, default=Path("presets"))
    args = ap.parse_args(argv)
    logger = logging.getLogger("lofi_lora")
    level, _ = logger.level, logger.setLevel(logging.ERROR)  # the problems are printed below, each once
    try:
        problems = check(args.metadata_dir, args.raw_dir, args.presets)
    finally:
        logger.setLevel(level)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.metadata_dir}", file=sys.stderr)
    else:
        n = len(load_metadata(args.metadata_dir, PresetLibrary(args.presets)).sources)
        print(f"{args.metadata_dir}: {n} track(s), sources.json and style_mapping.json are valid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
