"""Accuracy and speed of the annotate estimators (BPM, key) against known ground truth.

Synthetic set (default): tracks from `lofi_lora.synth.render_track` over all presets, the 24 keys and the
styles' tempo ranges; each is analysed exactly as stage annotate analyses a clip (with its preset's
tempo_range). Real-instrument set (--real): MIDI files written here with known tempo and key (chords, bass,
melody, drums) rendered to WAV by FluidSynth with the FluidR3 General MIDI soundfont
(`apt-get install -y fluidsynth fluid-soundfont-gm`, `pip install mido==1.3.3`).

Scores: BPM Acc1 (within 4 %), Acc2 (also x2, x1/2, x3, x1/3), key MIREX weighted score (mir_eval weights),
exact-key rate, and speed as seconds of audio analysed per wall second with `--workers` processes.

    python benchmarks/annotation_accuracy.py --tracks 40 --workers 2
    python benchmarks/annotation_accuracy.py --real --tracks 24
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from lofi_lora.annotate.analysis import AnalysisOptions, analyze
from lofi_lora.annotate.scoring import bpm_acc1, bpm_acc2, mirex_key_score
from lofi_lora.presets import PresetLibrary

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CATEGORY_BPM = {"CORE": (70, 90), "JAZZ": (75, 95), "AMB": (60, 75), "CHILL": (85, 95), "DUSK": (60, 80)}


def synth_specs(n: int, seconds: float, seed: int) -> list[dict]:
    """Tracks spread over every preset, all 24 keys and each style's tempo range (DUSK is minor only)."""
    ids = PresetLibrary().ids()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sid = ids[(i * 5) % len(ids)]
        cat = sid.split("-")[0]
        mode = "minor" if cat == "DUSK" else ("major", "minor")[(i // 12) % 2]
        lo, hi = CATEGORY_BPM[cat]
        out.append({"track_id": f"bench{i:03d}", "style_id": sid, "bpm": round(float(rng.uniform(lo, hi)), 1),
                    "tonic": NOTE_NAMES[(i * 7) % 12], "mode": mode, "seconds": seconds, "seed": seed + i})
    return out


def _render_synth(spec: dict, cache_dir: str | None) -> tuple[np.ndarray, int]:
    from lofi_lora.synth.render import TrackSpec, render_track

    import lofi_lora.synth as synth_pkg

    # The key covers the synth's source too: a changed renderer must not be scored from stale audio.
    src = b"".join(p.read_bytes() for p in sorted(Path(synth_pkg.__file__).parent.glob("*.py")))
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode() + src).hexdigest()[:12]
    path = Path(cache_dir) / f"{spec['track_id']}_{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path), 44100
    audio, _ = render_track(TrackSpec(**spec), sample_rate=44100)
    if path is not None:
        np.save(path, audio)
    return audio, 44100


def _analyse(job: tuple[dict, np.ndarray, int, tuple[float, float], AnalysisOptions]) -> dict:
    spec, audio, sr, tempo_range, opts = job
    t0, c0 = time.perf_counter(), time.process_time()
    a = analyze(audio, sr, tempo_range, opts)
    return {**spec, "est_bpm": a.tempo.bpm, "est_key": a.key.keyscale, "audio_s": audio.shape[-1] / sr,
            "analysis_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "bpm_conf": a.tempo.confidence, "key_conf": a.key.confidence}


def _warm(_: int) -> None:
    analyze(np.random.default_rng(0).standard_normal((2, 44100 * 3)).astype(np.float32) * 0.1, 44100, (70, 90))


def run_analysis(items: list[tuple[dict, np.ndarray, int, tuple[float, float]]], opts: AnalysisOptions,
                 workers: int) -> tuple[list[dict], float]:
    """Analyse every item with `workers` processes (warmed up first); returns rows and wall seconds."""
    jobs = [(*it, opts) for it in items]
    if workers <= 1:
        _warm(0)
        t0 = time.perf_counter()
        rows = [_analyse(j) for j in jobs]
        return rows, time.perf_counter() - t0
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_warm, range(workers)))
        t0 = time.perf_counter()
        rows = list(pool.map(_analyse, jobs, chunksize=1))
        return rows, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------- real set
PROGRESSIONS = {"major": [(0, "maj7"), (5, "min7"), (3, "maj7"), (4, "dom7")],      # I vi IV V
                "minor": [(0, "min7"), (5, "maj7"), (3, "min7"), (4, "min7")]}      # i VI iv v
SCALE = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
CHORD = {"maj7": (0, 4, 7, 11), "min7": (0, 3, 7, 10), "dom7": (0, 4, 7, 10)}
GM_KEYS = (0, 4, 5, 11, 24, 26, 48, 88)     # grand piano, EP, EP2, vibes, nylon gtr, jazz gtr, strings, pad
GM_LEAD = (73, 65, 56, 11, 0)                # flute, alto sax, trumpet, vibes, piano


def write_midi(path: Path, bpm: float, tonic: int, mode: str, bars: int, seed: int) -> None:
    """A small arrangement in 4/4: chords, root bass, a scale melody and a boom-bap drum loop."""
    import mido

    rng = np.random.default_rng(seed)
    tpb = 480
    mid = mido.MidiFile(ticks_per_beat=tpb)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))
    mid.tracks.append(meta)
    events: list[tuple[int, mido.Message]] = []

    def note(ch: int, pitch: int, start: int, dur: int, vel: int) -> None:
        events.append((start, mido.Message("note_on", channel=ch, note=pitch, velocity=vel)))
        events.append((start + dur, mido.Message("note_off", channel=ch, note=pitch, velocity=0)))

    keys_prog, lead_prog = int(rng.choice(GM_KEYS)), int(rng.choice(GM_LEAD))
    events += [(0, mido.Message("program_change", channel=0, program=keys_prog)),
               (0, mido.Message("program_change", channel=1, program=33)),      # fingered bass
               (0, mido.Message("program_change", channel=2, program=lead_prog))]
    prog = PROGRESSIONS[mode]
    scale = SCALE[mode]
    bar = 4 * tpb
    for b in range(bars):
        deg, quality = prog[b % len(prog)]
        root = 48 + tonic + scale[deg]
        root = root - 12 if root > 59 else root
        for iv in CHORD[quality]:
            note(0, root + iv + 12 * (iv < 5), b * bar, bar - 30, 62)
        note(1, 36 + (tonic + scale[deg]) % 12, b * bar, 2 * tpb - 20, 90)
        note(1, 36 + (tonic + scale[deg]) % 12, b * bar + int(2.5 * tpb), tpb, 80)
        for beat in range(4):
            if rng.random() < 0.7:
                step = int(rng.choice([0, 2, 4, 2, 0, 4, 6]))
                pitch = 72 + tonic % 12 + scale[(deg + step) % 7] + 12 * ((deg + step) // 7) - 12 * (tonic > 6)
                note(2, pitch, b * bar + beat * tpb, tpb - 40, 70)
        for beat in range(4):                                      # drums on channel 10 (index 9)
            t = b * bar + beat * tpb
            note(9, 36 if beat in (0, 2) else 38, t, tpb // 4, 100 if beat in (0, 2) else 90)
            note(9, 42, t, tpb // 8, 60)
            note(9, 42, t + int(0.6 * tpb), tpb // 8, 45)
    track = mido.MidiTrack()
    events.sort(key=lambda e: (e[0], e[1].type == "note_on"))
    now = 0
    for t, msg in events:
        track.append(msg.copy(time=t - now))
        now = t
    mid.tracks.append(track)
    mid.save(path)


def real_items(n: int, seconds: float, seed: int, workdir: Path) -> list[tuple[dict, np.ndarray, int, tuple[float, float]]]:
    from lofi_lora import audio as audio_io

    exe = shutil.which("fluidsynth")
    sf2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
    if exe is None or not sf2.is_file():
        raise SystemExit("--real needs `apt-get install -y fluidsynth fluid-soundfont-gm`")
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        mode = ("major", "minor")[i % 2]
        tonic = (i * 5) % 12
        bpm = round(float(rng.uniform(60, 95)), 1)
        bars = max(4, int(round(seconds / (4 * 60 / bpm))))
        mid, wav = workdir / f"real{i:03d}.mid", workdir / f"real{i:03d}.wav"
        write_midi(mid, bpm, tonic, mode, bars, seed + i)
        subprocess.run([exe, "-ni", "-q", "-g", "0.6", "-r", "44100", "-F", str(wav), str(sf2), str(mid)],
                       check=True, capture_output=True)
        y, sr = audio_io.read(wav)
        spec = {"track_id": f"real{i:03d}", "style_id": "GM", "bpm": bpm, "tonic": NOTE_NAMES[tonic], "mode": mode}
        # The style prior a user would give: a +-15 % window around a lofi tempo, never centred on the truth.
        lo = 60.0 if bpm < 78 else 75.0
        items.append((spec, y, sr, (lo, lo + 20.0)))
    return items


# --------------------------------------------------------------------------------------------- report
def table(rows: list[dict], wall_s: float, workers: int, group: str) -> str:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r[group]].append(r)
    by["ALL"] = rows
    lines = [f"{'group':8s} {'n':>3s} {'Acc1':>6s} {'Acc2':>6s} {'MIREX':>6s} {'exact':>6s}"]
    for g, rs in by.items():
        a1 = np.mean([bpm_acc1(r["est_bpm"], r["bpm"]) for r in rs])
        a2 = np.mean([bpm_acc2(r["est_bpm"], r["bpm"]) for r in rs])
        ks = [mirex_key_score(r["est_key"], f"{r['tonic']} {r['mode']}") for r in rs]
        lines.append(f"{g:8s} {len(rs):3d} {a1:6.1%} {a2:6.1%} {np.mean(ks):6.3f} {np.mean(np.array(ks) == 1):6.1%}")
    audio_s = sum(r["audio_s"] for r in rows)
    cpu_s = sum(r["cpu_s"] for r in rows)
    load = os.getloadavg()[0]
    lines.append(f"speed: {audio_s:.0f} s of audio in {wall_s:.2f} s wall with {workers} worker(s) = "
                 f"{audio_s / wall_s:.0f}x realtime (load average {load:.1f} on {os.cpu_count()} CPUs)")
    lines.append(f"       CPU time {cpu_s:.2f} s = {audio_s / cpu_s:.0f}x realtime per core, "
                 f"{workers * audio_s / cpu_s:.0f}x on {workers} cores without contention")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--real", action="store_true", help="FluidSynth renders of generated MIDI instead of the synth")
    ap.add_argument("--key-profile", default="temperley")
    ap.add_argument("--bass-weight", type=float, default=AnalysisOptions().bass_weight)
    ap.add_argument("--start-weight", type=float, default=AnalysisOptions().start_weight)
    ap.add_argument("--candidate-margin", type=float, default=AnalysisOptions().candidate_margin)
    ap.add_argument("--cache", default=None, help="folder to keep rendered synth tracks between runs")
    ap.add_argument("--json", default=None, help="also write the rows and scores here")
    ap.add_argument("--verbose", action="store_true", help="one line per track")
    ap.add_argument("--trim-bars", type=int, default=0,
                    help="drop this many bars from each track's start (clips that do not open a phrase)")
    args = ap.parse_args(argv)
    opts = AnalysisOptions(key_profile=args.key_profile, bass_weight=args.bass_weight,
                           start_weight=args.start_weight, candidate_margin=args.candidate_margin)

    if args.real:
        workdir = Path(tempfile.mkdtemp(prefix="annot_real_"))
        try:
            items = real_items(args.tracks, args.seconds, args.seed, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        group = "mode"
    else:
        if args.cache:
            os.makedirs(args.cache, exist_ok=True)
        specs = synth_specs(args.tracks, args.seconds, args.seed)
        lib = PresetLibrary()
        with ProcessPoolExecutor(args.workers) as pool:
            rendered = list(pool.map(_render_synth, specs, [args.cache] * len(specs)))
        items = [(s, a, sr, tuple(lib[s["style_id"]]["tempo_range"])) for s, (a, sr) in zip(specs, rendered)]
        for s in specs:
            s["category"] = s["style_id"].split("-")[0]
        group = "category"
    if args.trim_bars:  # like a clip cut mid-track: stage annotate then drops the opening-bar cue too
        items = [(s, a[..., int(args.trim_bars * 4 * 60.0 / s["bpm"] * sr):], sr, r) for s, a, sr, r in items]
        opts = opts.for_clip(opens_track=False)
    rows, wall_s = run_analysis(items, opts, args.workers)
    if args.verbose:
        for r in rows:
            print(f"{r['track_id']} {r['style_id']:9s} bpm {r['bpm']:6.1f} -> {r['est_bpm']:6.1f}   "
                  f"key {r['tonic']} {r['mode']:5s} -> {r['est_key']:9s} ({mirex_key_score(r['est_key'], r['tonic'] + ' ' + r['mode']):.1f})")
    print(f"\n{'real (FluidSynth GM)' if args.real else 'synthetic (render_track)'}: {len(rows)} tracks, "
          f"{args.trim_bars} bar(s) trimmed, "
          f"key profile {opts.key_profile}, {os.cpu_count()} CPUs visible")
    print(table(rows, wall_s, args.workers, group))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wall_s": wall_s}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
