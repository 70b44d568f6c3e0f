"""The listening report opens from disk in headless Chromium and every player decodes its audio."""
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from lofi_lora.data import audio as audio_io
from lofi_lora.core.records import Record
from lofi_lora.metrics import metric
from lofi_lora.evaluate.report import write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class _P:
    index: int
    clip_id: str
    caption: str
    audio_path: str


@dataclass
class _M:
    label: str
    step: int
    samples: list = field(default_factory=list)
    records: dict = field(default_factory=dict)


def _fixture(tmp_path, seconds=2.0):
    sr = 48000
    t = np.arange(int(seconds * sr)) / sr
    prompts, models = [], []
    for i in range(2):
        y = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)
        f = tmp_path / "holdout" / f"clip{i}.wav"
        f.parent.mkdir(parents=True, exist_ok=True)
        audio_io.write(f, np.stack([y, y]).astype(np.float32), sr)
        prompts.append(_P(i, f"clip{i}", f"lofi <tape> & piano {i}", str(f)))
    for label, step in (("base", 0), ("000010", 10)):
        recs = [Record(metric("val_loss"), 1.0 / (step + 1)), Record(metric("fd_logmel128_v1"), 3.0 - step / 10),
                Record(metric("clap_score"), None, "no CLAP weights configured")]
        m = _M(label, step, records={r.id: r for r in recs})
        for p in prompts:
            for s in (0, 1):
                f = tmp_path / "samples" / label / f"p{p.index:02d}_s{s}.wav"
                f.parent.mkdir(parents=True, exist_ok=True)
                y = 0.2 * np.random.default_rng(s).normal(size=t.size)
                audio_io.write(f, np.stack([y, y]).astype(np.float32), sr)
                m.samples.append({"file": f.name, "path": str(f), "prompt_index": p.index, "seed": s})
        models.append(m)
    flat = {"best_metric": "val_loss", "best_mode": "min", "variant": "turbo", "sampling_steps": 8,
            "num_prompts": 2, "duration_s": seconds, "holdout_clips": 2}
    return prompts, models, flat


def _chromium(args, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: `apt-get install -y chromium` (the Makefile's test target installs it)")
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", "--disable-dev-shm-usage", "--mute-audio", f"--user-data-dir={tmp_path / 'chrome'}",
            "--virtual-time-budget=10000"]
    proc = subprocess.run(base + args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("embed_max_mb", [16.0, 0.0], ids=["embedded", "linked"])
def test_report_players_decode_in_chromium(tmp_path, embed_max_mb):
    prompts, models, flat = _fixture(tmp_path)
    index = write_report(tmp_path / "reports", models, prompts, models[1], ["val_loss", "fd_logmel128_v1",
                                                                            "clap_score"], flat, embed_max_mb)
    text = index.read_text()
    assert "http://" not in text and "https://" not in text  # opens from disk, nothing fetched
    assert "&lt;tape&gt; &amp; piano" in text and "no CLAP weights configured" in text
    if embed_max_mb == 0.0:
        assert (tmp_path / "reports" / "media" / "000010" / "p01_s1.ogg").is_file()
    else:
        assert not (tmp_path / "reports" / "media").exists() and "data:audio/ogg;base64," in text
    dom = _chromium(["--dump-dom", index.as_uri()], tmp_path)
    durations = [float(d) for d in re.findall(r'<audio[^>]*data-duration="([0-9.]+)"', dom)]
    n_players = 2 + 2 * 2 * 2  # holdout per prompt + models x prompts x seeds
    assert dom.count("<audio") == n_players
    assert len(durations) == n_players, dom[:3000]
    assert all(abs(d - 2.0) < 0.1 for d in durations), durations
    assert f'data-decoded="{n_players}"' in dom and 'data-errors="0"' in dom


@pytest.mark.slow
def test_report_screenshot(tmp_path):
    prompts, models, flat = _fixture(tmp_path)
    index = write_report(tmp_path / "reports", models, prompts, models[1], ["val_loss", "clap_score"], flat)
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,900", index.as_uri()], tmp_path)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("LOFI_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


@pytest.mark.parametrize("embed_max_mb", [16.0, 0.0], ids=["embedded", "linked"])
def test_report_is_byte_identical_when_rebuilt(tmp_path, embed_max_mb):
    """reports/ is a DVC output: rebuilding it from the same samples must hash the same (libsndfile draws a random
    Ogg stream serial per file; the report's OGGs get a fixed one, so their bytes repeat)."""
    prompts, models, flat = _fixture(tmp_path)
    trees = []
    for run in ("a", "b"):
        out = tmp_path / run
        write_report(out, models, prompts, models[1], ["val_loss", "clap_score"], flat, embed_max_mb)
        trees.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert trees[0].keys() == trees[1].keys() and trees[0] == trees[1]
    assert any(name.endswith(".ogg") for name in trees[0]) or embed_max_mb > 0
