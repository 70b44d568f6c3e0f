"""Accuracy and speed of stage annotate's track-level tempo and key, on material it was not tuned to.

Sets: `synth` (the project's own generator, for reference only: it shares the estimators' assumptions),
`gm` (benchmarks/gm_corpus.py: MIDI written by a script, rendered by FluidSynth through the FluidR3 General MIDI
soundfont, swung 60-100 BPM, progressions that do not open on the tonic, four tracks that modulate), and music
written by people (benchmarks/human_corpus.py: music21's corpus through three soundfonts): `chorales-A` and
`chorales-B` (Bach chorales, alternate pieces) and `fiddle` (Ryan's Mammoth Collection, single-line tunes),
none with drums; `openmsx` (benchmarks/openmsx_corpus.py: OpenTTD's MIDI soundtrack from Debian, jazz, blues and
pop arranged with drums by their composers; tempo for all, key for the 8 whose file names one), `freedoom`
(benchmarks/freedoom_corpus.py: the MIDI lumps of Debian's Freedoom WADs, drummed, tempo only), `mma`
(benchmarks/mma_corpus.py: the main groove of each style of Debian's MMA groove library, drums, bass and chords
written by its authors, over a fixed chart; tempo only) and `synco` (benchmarks/syncopated_corpus.py: gm's tracks
with 3+3+2, tresillo and dembow drum parts, for tuning).
The key and tempo estimators were tuned on synth, gm, synco and chorales-A only; chorales-B, fiddle, openmsx and
freedoom are reported (openmsx's two 4/3 misses motivated the synco set and its rule, so freedoom, added after
that rule was fixed, was the held-out drummed figure; its misses have since been looked at, so mma, added last and
run once, is the held-out drummed figure now).
Key columns beside MIREX: the share of tracks named as the relative key (rel), the dominant (dom) and the
subdominant (sub). Variants of each:
  full      the whole track as one clip
  midphrase the track minus its first 1.37 bars (starts mid-phrase, mid-bar)
  10s       a 10 s excerpt from 40 % into the track
  pink10    pink noise added at 10 dB SNR
  clips     cut by stage preprocess's own cutter (`audio.max_clip_s`), annotated as the stage does:
            each clip analysed alone, then one tempo and one key (or key change) per track
No style prior anywhere (`tempo_range=None`): the octave comes from the audio and, where the beat grid fits both
octaves about equally, from the lofi range of conf/annotate (`AnalysisOptions` default 60-100 BPM; the human
sets draw their tempi from 56-104 so that some lie outside it).

Scores: BPM Acc1 (within 4 %), Acc2 (also x2, x1/2, x3, x1/3), MIREX weighted key score (mir_eval weights),
exact key; per track and, for `clips`, per clip (`clip-own` = each clip analysed alone, the old behaviour);
one-key-per-track rate; key changes found; speed as audio seconds per wall second of the annotate analysis
with `--workers` processes. `--compare` adds essentia's KeyExtractor (edma, temperley, shaath) per track.

    make bench-annotate        # installs fluidsynth, the soundfonts (root) and music21, then the runs below
    python benchmarks/annotation_accuracy.py --sets chorales-B,fiddle,chorales-A --tracks 20 --workers 2 --compare
    python benchmarks/annotation_accuracy.py --sets gm,synth,synco --tracks 24 --workers 2 --compare
    python benchmarks/annotation_accuracy.py --sets openmsx --tracks 40 --variants full,midphrase,10s,pink10,clips
    python benchmarks/annotation_accuracy.py --sets freedoom --tracks 60 --workers 2
    python benchmarks/annotation_accuracy.py --sets mma --tracks 40 --workers 2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gm_corpus import gm_specs, render  # noqa: E402
import human_corpus  # noqa: E402
import freedoom_corpus  # noqa: E402
import mma_corpus  # noqa: E402
import openmsx_corpus  # noqa: E402
import syncopated_corpus  # noqa: E402

from lofi_lora.annotate.analysis import AnalysisOptions, analyze  # noqa: E402
from lofi_lora.annotate.key import key_from_chroma  # noqa: E402
from lofi_lora.annotate.scoring import bpm_acc1, bpm_acc2, mirex_key_score  # noqa: E402
from lofi_lora.annotate.track import analyse_track  # noqa: E402
from lofi_lora.data.presets import PresetLibrary  # noqa: E402

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CATEGORY_BPM = {"CORE": (70, 90), "JAZZ": (75, 95), "AMB": (60, 75), "CHILL": (85, 95), "DUSK": (60, 80)}
SR = 44100
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
        return np.load(path), SR
    audio, _ = render_track(TrackSpec(**spec), sample_rate=SR)
    if path is not None:
        np.save(path, audio)
    return audio, SR


def _gm_render(args: tuple) -> np.ndarray:
    spec, cache_dir = args
    digest = hashlib.sha256((repr(spec) + Path(__file__).with_name("gm_corpus.py").read_text()).encode()).hexdigest()
    path = Path(cache_dir) / f"{spec.track_id}_{digest[:12]}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    with tempfile.TemporaryDirectory() as wd:
        y = render(spec, Path(wd), SR)
    if path is not None:
        np.save(path, y)
    return y


def _human_render(args: tuple) -> np.ndarray:
    spec, cache_dir = args
    module = {openmsx_corpus.MsxPiece: openmsx_corpus,
              syncopated_corpus.SyncoTrack: syncopated_corpus}.get(type(spec), human_corpus)
    src = "".join(Path(__file__).with_name(f).read_text() for f in ("human_corpus.py", "gm_corpus.py",
                                                                   "openmsx_corpus.py"))
    if module is syncopated_corpus:
        src += Path(syncopated_corpus.__file__).read_text()
    digest = hashlib.sha256((repr(spec) + src).encode()).hexdigest()
    path = Path(cache_dir) / f"{spec.track_id}_{digest[:12]}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    with tempfile.TemporaryDirectory() as wd:
        y = module.render(spec, Path(wd), SR)
    if path is not None:
        np.save(path, y)
    return y


def pink_noise(n: int, seed: int) -> np.ndarray:
    """1/f noise: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(spec.size), 1.0))
    y = np.fft.irfft(spec, n)
    return y / y.std()


def preprocess_cuts(y: np.ndarray, max_s: float, min_s: float) -> list[tuple[float, float]]:
    """Clip spans as stage preprocess cuts them (bar-aligned quiet points)."""
    from lofi_lora.preprocess.stage import analyse as cut_curves, choose_cuts

    cuts = choose_cuts(cut_curves(y, SR), y.shape[-1] / SR, max_s, min_s)
    return list(zip(cuts[:-1], cuts[1:]))


def variant(name: str, y: np.ndarray, truth: dict, seed: int, max_s: float, min_s: float
            ) -> list[tuple[float, float, np.ndarray]]:
    """(start_s, end_s, audio) clips of one track for a variant."""
    dur = y.shape[-1] / SR
    if name == "full":
        return [(0.0, dur, y)]
    if name == "midphrase":
        s = 1.37 * 4 * 60.0 / truth["bpm"]
        return [(s, dur, y[:, int(s * SR):])]
    if name == "10s":
        s = 0.4 * dur
        return [(s, s + 10.0, y[:, int(s * SR): int((s + 10.0) * SR)])]
    if name == "pink10":
        noise = pink_noise(y.shape[-1], seed)
        noise *= np.sqrt(np.mean(y ** 2)) / 10 ** (10 / 20)
        return [(0.0, dur, (y + noise[None]).astype(np.float32))]
    if name == "clips":
        return [(a, b, y[:, int(a * SR): int(b * SR)]) for a, b in preprocess_cuts(y, max_s, min_s)]
    raise ValueError(name)


def key_at(truth: dict, t: float) -> str:
    return truth["keyscale2"] if truth.get("change_s") is not None and t >= truth["change_s"] else truth["keyscale"]


def _analyse_clip(job: tuple) -> tuple:
    clip, opts = job
    c0, t0 = time.process_time(), time.perf_counter()
    a = analyze(clip, SR, opts)
    return a, time.process_time() - c0, time.perf_counter() - t0


def _essentia_keys(y: np.ndarray) -> dict[str, str]:
    import essentia.standard as es
    from lofi_lora.annotate.key import normalise_tonic

    out = {}
    for prof in ("edma", "temperley", "shaath"):
        k, scale = es.KeyExtractor(profileType=prof)(np.ascontiguousarray(y.mean(axis=0), dtype=np.float32))[:2]
        out[prof] = f"{normalise_tonic(k)} {scale}"
    return out


def run_variant(tracks: list[tuple[dict, np.ndarray]], name: str, opts: AnalysisOptions, pool, args) -> dict:
    """Analyse every clip of every track (in the pool), then each track as stage annotate does; score."""
    per_track = [variant(name, y, t, i, args.max_clip_s, args.min_clip_s)
                 for i, (t, y) in enumerate(tracks)]
    jobs = [(audio, opts) for clips in per_track for _, _, audio in clips]
    t0 = time.perf_counter()
    results = list(pool.map(_analyse_clip, jobs, chunksize=1)) if pool else [_analyse_clip(j) for j in jobs]
    it = iter(results)
    rows, clip_rows = [], []
    for (truth, _), clips in zip(tracks, per_track):
        analyses = [next(it)[0] for _ in clips]
        tr = analyse_track(analyses, opts)
        start = clips[0][0]
        first_key = tr.key_segments[0].key.keyscale
        row = {"track_id": truth["track_id"], "bpm": truth["bpm"], "est_bpm": tr.bpm, "source": tr.bpm_source,
               "key": key_at(truth, start), "est_key": first_key, "modulates": truth.get("change_s") is not None,
               "key_change": tr.key_change, "one_key": len({v.keyscale for v in tr.clips}) == 1,
               "flags": sum(bool(v.flags) for v in tr.clips), "clips": len(clips)}
        if truth.get("change_s") is not None and name in ("full", "pink10", "clips"):
            row["change_ok"] = bool(tr.key_change and tr.key_change["to"] == truth["keyscale2"]
                                    and abs(tr.key_change["at_s"] + start - truth["change_s"]) < 6)
        # Issue 14's estimator (key profile + bass tonic evidence on the whole track's chroma), for comparison.
        row["profile_key"] = key_from_chroma(np.concatenate([an.chroma for an in analyses], axis=1),
                                             np.concatenate([an.bass_chroma for an in analyses], axis=1)).keyscale
        rows.append(row)
        for (a, b, _), an, v in zip(clips, analyses, tr.clips):
            clip_rows.append({"bpm": truth["bpm"], "key": key_at(truth, 0.5 * (a + b)), "est_bpm": tr.bpm,
                              "est_key": v.keyscale, "own_bpm": an.own_bpm, "own_key": an.key.keyscale})
    wall = time.perf_counter() - t0
    audio_s = sum(b - a for clips in per_track for a, b, _ in clips)
    cpu = sum(r[1] for r in results)
    if args.compare and name != "clips":
        for row, clips in zip(rows, per_track):
            row["essentia"] = _essentia_keys(clips[0][2])
    return {"rows": rows, "clip_rows": clip_rows, "audio_s": audio_s, "wall_s": wall, "cpu_s": cpu}


def confusion(est: str, truth: str) -> str:
    """How an estimated key relates to the truth: exact, relative, dominant, subdominant, parallel or other."""
    (et, em), (tt, tm) = est.split(), truth.split()
    d = (NOTE_NAMES.index(et) - NOTE_NAMES.index(tt)) % 12
    if em == tm:
        return {0: "exact", 7: "dominant", 5: "subdominant"}.get(d, "other")
    if (tm == "minor" and d == 3) or (tm == "major" and d == 9):
        return "relative"
    return "parallel" if d == 0 else "other"


def scores(rows: list[dict], bpm_key: str = "est_bpm", key_key: str = "est_key") -> dict:
    steady = [r for r in rows if not r.get("modulates")] if rows and "modulates" in rows[0] else rows
    keyed = [r for r in (steady if key_key in ("est_key", "profile_key") else rows) if r["key"]]  # openmsx: some have none
    ks = [mirex_key_score(r[key_key], r["key"]) for r in keyed]
    kinds = [confusion(r[key_key], r["key"]) for r in keyed]
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731  (freedoom: no keys)
    return {"n": len(rows), "n_keyed": len(keyed), "acc1": float(np.mean([bpm_acc1(r[bpm_key], r["bpm"]) for r in rows])),
            "acc2": float(np.mean([bpm_acc2(r[bpm_key], r["bpm"]) for r in rows])),
            "mirex": mean(ks), "exact": mean(np.array(ks) == 1.0),
            "relative": mean([k == "relative" for k in kinds]),
            "dominant": mean([k == "dominant" for k in kinds]),
            "subdominant": mean([k == "subdominant" for k in kinds])}


def report(set_name: str, name: str, res: dict, workers: int) -> dict:
    rows, clip_rows = res["rows"], res["clip_rows"]
    out = {"set": set_name, "variant": name, "track": scores(rows), "speed_x": res["audio_s"] / res["wall_s"],
           "per_core_x": res["audio_s"] / res["cpu_s"]}
    line = (f"{set_name:5s} {name:9s} tracks {out['track']['n']:3d}  Acc1 {out['track']['acc1']:.3f}  "
            f"Acc2 {out['track']['acc2']:.3f}  MIREX ({out['track']['n_keyed']} keyed) {out['track']['mirex']:.3f}  exact {out['track']['exact']:.3f}  "
            f"rel {out['track']['relative']:.3f}  dom {out['track']['dominant']:.3f}  "
            f"sub {out['track']['subdominant']:.3f}")
    if name == "clips":
        out["clip"] = {k: v for k, v in scores([{**r, "modulates": False} for r in clip_rows]).items()}
        out["clip_own"] = scores([{**r, "modulates": False} for r in clip_rows], "own_bpm", "own_key")
        steady = [r for r in rows if not r["modulates"]]
        out["one_key_per_track"] = float(np.mean([r["one_key"] for r in steady]))
        line += (f"\n{'':16s}clips {out['clip']['n']:3d}  Acc1 {out['clip']['acc1']:.3f}  MIREX "
                 f"{out['clip']['mirex']:.3f}   clip-own: Acc1 {out['clip_own']['acc1']:.3f}  MIREX "
                 f"{out['clip_own']['mirex']:.3f}   one key per track {out['one_key_per_track']:.3f}")
    mod = [r for r in rows if r.get("modulates") and "change_ok" in r]
    if mod:
        out["key_changes_found"] = f"{sum(r['change_ok'] for r in mod)}/{len(mod)}"
        out["false_key_changes"] = f"{sum(bool(r['key_change']) for r in rows if not r['modulates'])}/" \
                                   f"{sum(not r['modulates'] for r in rows)}"
        line += f"  key changes found {out['key_changes_found']}, false {out['false_key_changes']}"
    old = scores(rows, key_key="profile_key") if rows and "profile_key" in rows[0] else None
    if old is not None:
        out["profile_key"] = old
        line += (f"\n{'':16s}issue-14 profile key: MIREX {old['mirex']:.3f}  rel {old['relative']:.3f}  "
                 f"dom {old['dominant']:.3f}")
    if rows and "essentia" in rows[0]:
        steady = [r for r in rows if not r.get("modulates")]
        out["essentia_mirex"] = {p: float(np.mean([mirex_key_score(r["essentia"][p], r["key"]) for r in steady
                                                     if r["key"]]))
                                 for p in rows[0]["essentia"]}
        line += "  essentia KeyExtractor MIREX " + ", ".join(f"{p} {v:.3f}" for p, v in out["essentia_mirex"].items())
    out["sources"] = {s: sum(r["source"] == s for r in rows) for s in {r["source"] for r in rows}}
    out["tempo_misses"] = [f"{r['track_id']} {r['est_bpm']:.1f} for {r['bpm']:.1f} (x{r['est_bpm'] / r['bpm']:.2f}, "
                           f"{r['source']})" for r in rows if not bpm_acc1(r["est_bpm"], r["bpm"])]
    if out["tempo_misses"]:
        line += f"\n{'':16s}tempo misses: " + "; ".join(out["tempo_misses"])
    line += (f"\n{'':16s}speed {out['speed_x']:.0f}x realtime with {workers} worker(s) "
             f"({out['per_core_x']:.0f}x per core), bpm_source {out['sources']}")
    print(line, flush=True)
    return out


def load_set(set_name: str, args) -> list[tuple[dict, np.ndarray]]:
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
    with ProcessPoolExecutor(args.workers) as pool:
        if set_name in ("chorales-A", "chorales-B", "fiddle", "openmsx", "freedoom", "mma"):
            specs = openmsx_corpus.msx_specs(args.tracks, args.seed) if set_name == "openmsx" else \
                freedoom_corpus.freedoom_specs(args.tracks, args.seed) if set_name == "freedoom" else \
                mma_corpus.mma_specs(args.tracks, args.seed) if set_name == "mma" else \
                human_corpus.human_specs(set_name, args.tracks, args.seed)
            audio = list(pool.map(_human_render, [(s, args.cache) for s in specs]))
            return [(s.truth(), y) for s, y in zip(specs, audio)]
        if set_name == "synco":
            specs = syncopated_corpus.synco_specs(args.tracks, args.seconds, args.seed)
            audio = list(pool.map(_human_render, [(s, args.cache) for s in specs]))
            return [(s.truth(), y) for s, y in zip(specs, audio)]
        if set_name == "gm":
            specs = gm_specs(args.tracks, args.seconds, args.seed, modulating=max(args.tracks // 6, 1))
            audio = list(pool.map(_gm_render, [(s, args.cache) for s in specs]))
            return [(s.truth(), y) for s, y in zip(specs, audio)]
        specs = synth_specs(args.tracks, args.seconds, args.seed)
        audio = [a for a, _ in pool.map(_render_synth, specs, [args.cache] * len(specs))]
        return [({"track_id": s["track_id"], "bpm": s["bpm"], "keyscale": f"{s['tonic']} {s['mode']}"}, a)
                for s, a in zip(specs, audio)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="synth,gm")
    ap.add_argument("--variants", default="full,midphrase,10s,pink10,clips")
    ap.add_argument("--tracks", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--max-clip-s", type=float, default=30.0)
    ap.add_argument("--min-clip-s", type=float, default=8.0)
    ap.add_argument("--compare", action="store_true", help="also essentia's KeyExtractor profiles per track")
    ap.add_argument("--cache", default=None, help="folder to keep rendered tracks between runs")
    ap.add_argument("--json", default=None, help="also write every score here")
    args = ap.parse_args(argv)
    opts = AnalysisOptions()
    print(f"annotation accuracy: {args.tracks} tracks of {args.seconds:g} s per set, no style prior, "
          f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}")
    results = []
    for set_name in args.sets.split(","):
        tracks = load_set(set_name, args)
        # A fresh pool per set, started after the renders' pool is gone, warmed before timing.
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(_analyse_clip, [(tracks[0][1][:, : 10 * SR], opts)] * args.workers))
            for name in args.variants.split(","):
                results.append(report(set_name, name, run_variant(tracks, name, opts, pool, args), args.workers))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
