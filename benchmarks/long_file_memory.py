"""Peak memory (RSS) of stages ingest and preprocess on one long WAV (a DJ mix, a live set): bounded whatever its length.

Writes an H-hour 44.1 kHz 16-bit stereo WAV (1.27 GB for 2 hours) in blocks, with sources.json and
style_mapping.json, to a scratch folder; runs each stage's library entry (`run_ingest`, `preprocess`) with the
committed params.yaml (workers: 1, so one process holds everything) in a fresh child process; prints a table of
peak RSS and wall time; deletes the folder.

    python benchmarks/long_file_memory.py --hours 2 6            # the README's figures
    python benchmarks/long_file_memory.py --hours 2 --stages ingest
    python benchmarks/long_file_memory.py --hours 6 --preprocess-parts 3   # preprocess on the first 3 parts only

Preprocess handles one part at a time and keeps only each clip's figures, so `--preprocess-parts` bounds its time
(about 2 min per 10-minute part on 2 cores) where a full 6-hour run would take over an hour.

The signal is not the project's synthetic lofi: seeded white noise through a slowly moving band-pass, plus
decaying tones at random times and pitches, so cut points, loudness and fingerprints see irregular material.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SR = 44100
BLOCK_S = 60


def write_long_wav(path: Path, hours: float, seed: int = 0) -> None:
    """An `hours`-long stereo PCM_16 WAV written one minute at a time (memory: one block)."""
    import soundfile as sf
    from scipy import signal

    rng = np.random.default_rng(seed)
    zi = None
    with sf.SoundFile(str(path), "w", samplerate=SR, channels=2, subtype="PCM_16", format="WAV") as f:
        for k in range(int(hours * 3600 / BLOCK_S)):
            n = BLOCK_S * SR
            centre = 300 + 2500 * (0.5 + 0.5 * np.sin(k / 7.0))
            sos = signal.butter(2, [centre * 0.7, centre * 1.4], "bandpass", fs=SR, output="sos")
            noise, zi = signal.sosfilt(sos, rng.standard_normal((n, 2)), axis=0,
                                       zi=np.zeros((sos.shape[0], 2, 2)) if zi is None else zi)
            tones = np.zeros(n)
            for start in np.sort(rng.uniform(0, BLOCK_S - 2, 40)):
                s, tau = int(start * SR), rng.uniform(0.2, 2)
                tt = np.arange(min(n - s, int(6 * tau * SR))) / SR
                tones[s:s + tt.size] += 0.08 * np.sin(2 * np.pi * rng.uniform(80, 900) * tt) * np.exp(-tt / tau)
            x = 0.15 * noise + tones[:, None] * [1.0, 0.8]
            f.write(np.clip(x, -1, 1).astype(np.float32))


def child(stage: str, folder: Path, parts: int | None) -> None:
    """Run one stage on `folder` and print its peak RSS (this process and any it waited for) as JSON."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    t0 = time.perf_counter()
    if stage == "ingest":
        from omegaconf import OmegaConf

        from lofi_lora.ingest.stage import run_ingest

        cfg = OmegaConf.create({
            "data": {"raw_dir": str(folder / "raw"), "metadata_dir": str(folder / "meta")},
            "paths": {"interim": str(folder / "interim"), "presets": str(ROOT / "presets")},
            "ingest": {**params["ingest"], "workers": 1}, "audio": params["audio"]})
        result = run_ingest(cfg)
    else:
        from lofi_lora.preprocess.stage import preprocess

        if parts is not None:  # the first parts only (see --preprocess-parts)
            doc = json.loads((folder / "interim" / "ingest.json").read_text())
            doc["accepted"] = doc["accepted"][:parts]
            (folder / "interim" / "ingest.json").write_text(json.dumps(doc))

        m = preprocess(folder / "interim", folder / "clips", folder / "scores.json", folder / "data.json",
                       {**params["audio"], "workers": 1})
        result = {k: m[k] for k in ("tracks_accepted_ingest", "clips_out", "hours_out")}
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"peak_rss_mb": rss / 1024, "seconds": time.perf_counter() - t0, "result": result}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, nargs="+", default=[2.0, 6.0])
    ap.add_argument("--stages", nargs="+", default=["ingest", "preprocess"], choices=["ingest", "preprocess"])
    ap.add_argument("--preprocess-parts", type=int, help="preprocess only the first N parts ingest made")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]), args.preprocess_parts)
    rows = []
    for hours in args.hours:
        folder = Path(tempfile.mkdtemp(prefix=f"lofi_long_{hours:g}h_"))
        try:
            (folder / "raw").mkdir()
            (folder / "meta").mkdir()
            t0 = time.perf_counter()
            write_long_wav(folder / "raw" / "mix.wav", hours)
            size_gb = (folder / "raw" / "mix.wav").stat().st_size / 1e9
            print(f"wrote {hours:g} h ({size_gb:.2f} GB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            entry = {"file": "mix.wav", "licence": "owned", "provenance": "benchmark", "attribution": "benchmark"}
            (folder / "meta" / "sources.json").write_text(json.dumps({"version": 1, "tracks": {"mix": entry}}))
            (folder / "meta" / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": {"mix": ["CORE-01"]}}))
            for stage in args.stages:
                extra = ["--preprocess-parts", str(args.preprocess_parts)] if args.preprocess_parts else []
                proc = subprocess.run([sys.executable, __file__, "--child", stage, str(folder), *extra], capture_output=True,
                                      text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
                if proc.returncode != 0:
                    sys.exit(f"{stage} failed:\n{proc.stderr[-3000:]}")
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append((hours, size_gb, stage, out["peak_rss_mb"], out["seconds"], out["result"]))
                print(rows[-1], file=sys.stderr)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print("| audio | WAV size | stage | peak RSS | wall time | result |")
    print("|---|---|---|---|---|---|")
    for hours, size, stage, rss, secs, result in rows:
        print(f"| {hours:g} h | {size:.2f} GB | {stage} | {rss / 1024:.2f} GiB | {secs / 60:.1f} min | {result} |")


if __name__ == "__main__":
    main()
