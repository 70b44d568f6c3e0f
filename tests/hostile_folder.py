"""The hostile raw folder of issue 15: real-looking music mixed with every kind of bad file and bad metadata.

`build(raw_dir, metadata_dir)` writes it and returns what each entry must become: `{path: reason}` with
`accepted` for a track that must reach clips.json, and the quarantine reason (ingest or preprocess) for the rest.
Paths are relative to the repo root (`raw_dir`/`metadata_dir` as given). By hand:

    python tests/hostile_folder.py data/raw/local data/metadata   # then the README's "Your own music" steps
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from lofi_lora.data import audio
from lofi_lora.synth.render import TrackSpec, render_track

SR = 44100
METACHAR = "we ird $(touch PWNED) 'name'; rm -rf x"
UNICODE = "café – thème ☕"


def _music(k: int, seconds: float = 12.0) -> np.ndarray:
    style = ("CORE-01", "JAZZ-03", "AMB-01", "CHILL-01", "CORE-02")[k % 5]
    spec = TrackSpec(f"h{k}", style, 76.0 + 4 * k, ("A", "D", "F", "C", "G")[k % 5], ("minor", "major")[k % 2],
                     seconds, 900 + k)
    return render_track(spec, SR)[0]


def build(raw_dir: str | Path, metadata_dir: str | Path) -> dict[str, str]:
    raw, meta = Path(raw_dir), Path(metadata_dir)
    (raw / "soundtrack").mkdir(parents=True, exist_ok=True)
    meta.mkdir(parents=True, exist_ok=True)
    sources: dict[str, dict[str, str]] = {}
    styles: dict[str, list[str]] = {}
    expected: dict[str, str] = {}

    def add(tid: str, rel: str, outcome: str, style: str = "CORE-01", licence: str = "owned") -> None:
        sources[tid] = {"file": rel, "licence": licence, "provenance": "issue 15 hostile folder",
                        "attribution": "lofi-lora tests"}
        styles[tid] = [style]
        expected[(raw / rel).as_posix()] = outcome

    # music: OGG "soundtrack" tracks (lossy originals), a Unicode name, a shell-metacharacter name with a safe id
    for k in range(3):
        audio.write(raw / "soundtrack" / f"track{k}.ogg", _music(k), SR)
        add(f"track{k}", f"soundtrack/track{k}.ogg", "accepted", ("CORE-01", "JAZZ-03", "AMB-01")[k])
    audio.write(raw / f"{UNICODE}.flac", _music(3), SR)
    add("cafe-theme", f"{UNICODE}.flac", "accepted", "CHILL-01")
    audio.write(raw / f"{METACHAR}.wav", _music(4), SR)
    add("metachar-safe-id", f"{METACHAR}.wav", "accepted")
    # a trimmed, quieter FLAC re-encode of the first OGG: the OGG original must be kept
    decoded, _ = audio.read(raw / "soundtrack" / "track0.ogg")
    audio.write(raw / "track0 (remaster).flac", decoded[:, SR:] * 10 ** (-4 / 20), SR)
    add("track0-remaster", "track0 (remaster).flac", "duplicate")
    # 8-bit PCM of clean music at half amplitude: quantisation plateaus, not clipping
    m = _music(5)
    audio.write(raw / "pcm8.wav", m * 0.5 / np.abs(m).max(), SR, subtype="PCM_U8")
    add("pcm8", "pcm8.wav", "accepted")
    # really clipped, silent, NaN samples
    audio.write(raw / "clipped.wav", np.clip(_music(6) * 8.0, -1.0, 1.0), SR, subtype="PCM_16")
    add("clipped", "clipped.wav", "clipping")
    audio.write(raw / "silence.flac", np.zeros((2, 12 * SR), np.float32), SR)
    add("silence", "silence.flac", "silence")
    nan = _music(7)
    nan[:, 10_000:10_500] = np.nan
    audio.write(raw / "nan.wav", nan, SR, subtype="FLOAT")
    add("nan", "nan.wav", "non_finite")
    # files that do not decode
    audio.write(raw / "truncated.wav", _music(8), SR)
    (raw / "truncated.wav").write_bytes((raw / "truncated.wav").read_bytes()[:200_000])
    add("truncated", "truncated.wav", "undecodable")
    (raw / "header_only.wav").write_bytes((raw / "truncated.wav").read_bytes()[:44])
    add("header_only", "header_only.wav", "undecodable")
    (raw / "empty.flac").write_bytes(b"")
    add("empty", "empty.flac", "undecodable")
    (raw / "notes.mp3").write_text("these are my liner notes, not audio\n" * 50)
    add("notes", "notes.mp3", "undecodable")
    # the stem as track id (the natural choice) and an id that climbs out of the repo: both unsafe
    audio.write(raw / f"stem {METACHAR}.wav", _music(9), SR)
    add(f"stem {METACHAR}", f"stem {METACHAR}.wav", "bad_metadata")
    audio.write(raw / "escaped.wav", _music(10), SR)
    add("../../../../ESCAPED", "escaped.wav", "bad_metadata")
    # a file without a licence entry, and a style entry without a licence entry
    audio.write(raw / "unlicensed.wav", _music(11), SR)
    expected[(raw / "unlicensed.wav").as_posix()] = "no_licence"
    # symlinks: a loop, one leaving the raw folder, one staying inside (followed; same bytes as track1)
    os.symlink("loop.wav", raw / "loop.wav")
    os.symlink(os.path.relpath(meta / "sources.json", raw), raw / "escape.wav")
    os.symlink("soundtrack/track1.ogg", raw / "inside_link.ogg")
    expected |= {(raw / "loop.wav").as_posix(): "symlink_loop", (raw / "escape.wav").as_posix(): "symlink_escape",
                 (raw / "inside_link.ogg").as_posix(): "no_licence"}
    (meta / "sources.json").write_text(json.dumps({"version": 1, "tracks": sources}, ensure_ascii=False, indent=1))
    styles["ghost"] = ["CORE-01"]
    expected[(meta / "style_mapping.json").as_posix()] = "no_licence"
    (meta / "style_mapping.json").write_text(json.dumps({"version": 1, "tracks": styles}, ensure_ascii=False, indent=1))
    return expected


def outcomes(interim_dir: str | Path, clips_dir: str | Path) -> dict[str, str]:
    """What the pipeline made of each entry: `accepted` (it has clips) or its first quarantine reason."""
    out: dict[str, str] = {}
    for q in (json.loads(Path(d, "quarantine.json").read_text())["quarantined"] for d in (interim_dir, clips_dir)):
        for e in q:
            out.setdefault(e["path"], e["reason"])
    accepted = {a["track_id"]: a["path"] for a in json.loads(Path(interim_dir, "ingest.json").read_text())["accepted"]}
    for c in json.loads(Path(clips_dir, "clips.json").read_text())["clips"]:
        out.setdefault(accepted[c["track_id"]], "accepted")
    return out


if __name__ == "__main__":
    for path, outcome in sorted(build(sys.argv[1], sys.argv[2]).items()):
        print(f"{outcome:14s} {path}")
