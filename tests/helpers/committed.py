"""A reproduction against the committed results at a tolerance that float noise across CPUs cannot break.

Measured (issue 23): the committed run of fc87567 against `dvc repro` of the same commit on an AMD EPYC with AVX-512
VNNI. Every tracked file outside dvc.lock, metrics/ and plots/ was byte-identical; inside them 88 floats differed:
figures of magnitude >= 1e-3 by at most 3.0e-5 relative (val_loss 1.6e-8, FD 5e-8, INT4 parity 3.0e-5), figures
below 1e-3 (FP32 parity errors, themselves float noise) by at most 3.8e-7 absolute (up to 8 % relative), and the
eval PNGs in 0.1 % of their pixels by at most 4/255. Synth audio, clips, cache, adapters and ONNX files differ in
their bytes, so dvc.lock's output hashes do too.

RTOL is 33x that relative spread and 10x a flipped 5th significant digit of a rounded headline
(`lofi_lora.core.results.meaningful`); ATOL is 13x the absolute spread and 5x a flipped 1e-6 of a rounded parity figure,
and still below the smallest export tolerance (1e-5). A real change (another seed, learning rate, step count, a
changed parity) moves these figures by percent.
"""
from __future__ import annotations

import csv
import io
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import yaml

RTOL, ATOL = 1e-3, 5e-6
FLOAT_NOISE = ("dvc.lock", "metrics/", "plots/")  # the only tracked files whose bytes may differ on another CPU
PNG_MAX_PIXEL, PNG_MAX_SHARE = 32 / 255, 0.01   # measured: 4/255 in 0.1 % of the pixels
HASH_KEYS = ("md5", "hash", "size", "nfiles")


def committed(repo: Path, path: str) -> bytes:
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=repo, capture_output=True, check=True).stdout


def _close(a: Any, b: Any, where: str, problems: list[str]) -> None:
    """Structure and strings equal, numbers within RTOL/ATOL; each difference appended to `problems`."""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if numbers:
        if not math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL):
            problems.append(f"{where}: {a!r} committed, {b!r} reproduced")
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            problems.append(f"{where}: keys {sorted(set(a) ^ set(b))} differ")
        for k in set(a) & set(b):
            _close(a[k], b[k], f"{where}.{k}", problems)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{where}: {len(a)} items committed, {len(b)} reproduced")
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]", problems)
    elif a != b:
        problems.append(f"{where}: {a!r} committed, {b!r} reproduced")


def _cell(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _table(data: bytes, delimiter: str) -> list[list[Any]]:
    return [[_cell(c) for c in row] for row in csv.reader(io.StringIO(data.decode()), delimiter=delimiter)]


def _lock(data: bytes) -> dict:
    """dvc.lock without the hashes of outputs (and of deps that are another stage's outputs): those are float noise.
    Hashes of sources (code, params, raw inputs in git) stay: a stale dvc.lock still fails."""
    lock = yaml.safe_load(data)
    outs = {o["path"] for st in lock["stages"].values() for o in st.get("outs", [])}
    for st in lock["stages"].values():
        for entry in st.get("outs", []) + [d for d in st.get("deps", []) if d["path"] in outs]:
            for k in HASH_KEYS:
                entry.pop(k, None)
        for kind in ("deps", "outs"):  # by path, so a difference names the file
            st[kind] = {e.pop("path"): e for e in st.get(kind, [])}
    return lock


def _png(a: bytes, b: bytes, where: str, problems: list[str]) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    x, y = (mpimg.imread(io.BytesIO(d), format="png") for d in (a, b))
    if x.shape != y.shape:
        problems.append(f"{where}: image {x.shape} committed, {y.shape} reproduced")
        return
    diff = np.abs(x - y).max(axis=-1) if x.ndim == 3 else np.abs(x - y)
    if diff.max() > PNG_MAX_PIXEL or (diff > 0).mean() > PNG_MAX_SHARE:
        problems.append(f"{where}: {100 * (diff > 0).mean():.2f} % of the pixels differ, by up to {diff.max():.3f}")


def differences(repo: Path) -> list[str]:
    """What in the working tree of `repo` differs from its HEAD beyond float noise (empty: the same results)."""
    changed = subprocess.run(["git", "diff", "--name-only"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.split()
    problems: list[str] = []
    for path in changed:
        old, new = committed(repo, path), (repo / path).read_bytes()
        if not path.startswith(FLOAT_NOISE):
            problems.append(f"{path}: changed (only dvc.lock, metrics/ and plots/ may carry float noise)")
        elif path == "dvc.lock":
            _close(_lock(old), _lock(new), path, problems)
        elif path.endswith(".json"):
            _close(json.loads(old), json.loads(new), path, problems)
        elif path.endswith((".tsv", ".csv")):
            delimiter = "\t" if path.endswith(".tsv") else ","
            _close(_table(old, delimiter), _table(new, delimiter), path, problems)
        elif path.endswith(".png"):
            _png(old, new, path, problems)
        else:
            problems.append(f"{path}: changed, and no tolerance is defined for its kind")
    return problems
