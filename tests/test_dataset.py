"""Stage dataset: records from clips + sidecars, split by track, repeat count, the resumable condition cache."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.config import real_config
from lofi_lora.data import audio as audio_io
from lofi_lora.model.encode import latent_frames
from lofi_lora.model.load import load_pipeline
from lofi_lora.model.stage import run_base_model
from lofi_lora.dataset import stage as ds_mod
from lofi_lora.core.errors import DataError

SR = 48000


def make_cfg(tmp: Path):
    return real_config(tmp, dataset={"holdout_fraction": 0.25, "repeat_count": 3, "cache_batch_size": 2})


def write_corpus(cfg, tracks: dict[str, list[float]]) -> None:
    """clips.json + WAVs + sidecars as stages preprocess/annotate write them: {track_id: [clip seconds, ...]}."""
    clips_dir, ann = Path(cfg.paths.clips), Path(cfg.paths.annotations)
    rng = np.random.default_rng(0)
    clips = []
    for t, durations in tracks.items():
        for n, dur in enumerate(durations):
            cid = f"{t}__{n:03d}"
            wav = clips_dir / "wav" / f"{cid}.wav"
            audio_io.write(wav, (rng.standard_normal((2, int(dur * SR))) * 0.1).astype(np.float32), SR)
            clips.append({"clip_id": cid, "track_id": t, "wav": str(wav), "mp3": "", "start_s": n * dur,
                          "end_s": (n + 1) * dur, "duration_s": dur, "lufs": -14.0, "true_peak_dbfs": -1.0})
            side = {"caption": f"lofi hip hop, {t}, dusty drums", "lyrics": "[Instrumental]", "bpm": 80 + n,
                    "keyscale": "A minor", "timesignature": "4", "vocal_language": "unknown", "duration": dur,
                    "style_ids": ["CORE-01" if n % 2 == 0 else "JAZZ-02"], "track_id": t}
            (ann / f"{cid}.json").parent.mkdir(parents=True, exist_ok=True)
            (ann / f"{cid}.json").write_text(json.dumps(side))
    (clips_dir / "clips.json").write_text(json.dumps({"clips": clips}))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny base model and a corpus of 4 tracks (one with a longer clip), dataset stage run once."""
    torch.set_num_threads(2)
    cfg = make_cfg(tmp_path_factory.mktemp("ds"))
    run_base_model(cfg)
    write_corpus(cfg, {"trk_a": [1.0, 1.0], "trk_b": [1.0, 1.0], "trk_c": [1.0], "trk_d": [1.0, 1.5]})
    result = ds_mod.run_dataset(cfg)
    return cfg, result


def test_holdout_split_is_by_track_stable_and_never_empty():
    tracks = [f"t{i:03d}" for i in range(200)]
    held = ds_mod.holdout_tracks(tracks, 0.1, seed=0)
    assert 10 <= len(held) <= 30
    more = ds_mod.holdout_tracks(tracks + [f"new{i}" for i in range(50)], 0.1, seed=0)
    assert held == {t for t in more if t in set(tracks)}, "adding tracks must not move existing ones"
    assert ds_mod.holdout_tracks(tracks, 0.1, seed=1) != held
    two = ds_mod.holdout_tracks(["x", "y"], 0.1, seed=0)
    assert len(two) == 1
    assert ds_mod.holdout_tracks(["x"], 0.1, seed=0) == set()


def test_dataset_reopens_with_disjoint_tracks_and_repeats(built):
    from datasets import load_from_disk

    cfg, result = built
    dd = load_from_disk(cfg.paths.dataset)
    assert set(dd) == {"train", "holdout"}
    train_tracks, hold_tracks = set(dd["train"]["track_id"]), set(dd["holdout"]["track_id"])
    assert train_tracks and hold_tracks and not train_tracks & hold_tracks
    unique_train = set(dd["train"]["clip_id"])
    assert len(dd["train"]) == 3 * len(unique_train) == result["train_rows"]
    row = dd["holdout"][0]
    assert row["audio"]["sampling_rate"] == SR and Path(row["audio"]["path"]).is_file()
    assert row["style_id"] in ("CORE-01", "JAZZ-02") and row["bpm"] >= 80 and row["keyscale"] == "A minor"
    metrics = json.loads((Path(cfg.paths.metrics) / "dataset.json").read_text())["dataset"]
    assert metrics["train"]["clips"] + metrics["holdout"]["clips"] == 7
    assert metrics["train"]["seconds"] + metrics["holdout"]["seconds"] == pytest.approx(7.5)
    styles = json.loads((Path(cfg.paths.metrics) / "dataset" / "styles.json").read_text())
    assert {r["style"] for r in styles} == {"CORE-01", "JAZZ-02"}


def test_cache_entry_equals_a_fresh_computation(built):
    cfg, _ = built
    cache = Path(cfg.paths.cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    records = ds_mod.load_records(cfg.paths.clips, cfg.paths.annotations)
    assert set(manifest["clips"]) == {r["clip_id"] for r in records}
    pipe = load_pipeline(cfg.model, cfg.paths.base_model)
    for rec in (records[0], records[-1]):  # computed in a batch of two / alone (the 1.5 s clip)
        cached = ds_mod.read_cache(cache, [rec["clip_id"]])[0][rec["clip_id"]]
        assert manifest["clips"][rec["clip_id"]]["file"] == f"{rec['clip_id']}.safetensors"
        fresh = ds_mod.compute_entries(pipe, [rec], latent_seed=cfg.dataset.latent_seed,
                                       max_text_tokens=cfg.dataset.max_text_tokens,
                                       max_lyric_tokens=cfg.dataset.max_lyric_tokens)[0]
        assert set(cached) == set(ds_mod.CACHE_KEYS)
        for k in ds_mod.CACHE_KEYS:
            torch.testing.assert_close(cached[k], fresh[k], atol=1e-5, rtol=1e-4)
        frames = latent_frames(pipe, int(rec["duration"] * SR))
        c = pipe.transformer.config.audio_acoustic_hidden_dim
        assert cached["target_latents"].shape == (frames, c)
        assert cached["context_latents"].shape == (frames, 2 * c)
        assert cached["encoder_hidden_states"].shape[0] == cached["encoder_attention_mask"].shape[0]


def test_rerun_reuses_changed_inputs_recompute_and_stale_entries_go(built):
    cfg, _ = built
    again = ds_mod.run_dataset(cfg)
    assert again["computed"] == 0 and again["reused"] == 7
    ann = Path(cfg.paths.annotations)
    side = json.loads((ann / "trk_a__000.json").read_text())
    side["caption"] = "lofi hip hop, rainy night"
    (ann / "trk_a__000.json").write_text(json.dumps(side))
    clips_f = Path(cfg.paths.clips) / "clips.json"
    clips = json.loads(clips_f.read_text())
    clips["clips"] = [c for c in clips["clips"] if c["clip_id"] != "trk_c__000"]
    clips_f.write_text(json.dumps(clips))
    third = ds_mod.run_dataset(cfg)
    assert third["computed"] == 1 and third["reused"] == 5
    assert not (Path(cfg.paths.cache) / "trk_c__000.safetensors").exists()


def test_interrupted_cache_resumes(built, tmp_path, monkeypatch):
    cfg, _ = built
    pipe = load_pipeline(cfg.model, cfg.paths.base_model)
    records = ds_mod.load_records(cfg.paths.clips, cfg.paths.annotations)[:3]
    real = ds_mod.compute_entries
    calls = {"n": 0}

    def fail_on_second(*a, **k):  # the real computation, interrupted before the second batch
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ds_mod, "compute_entries", fail_on_second)
    kw = dict(weights_hash="fp", batch_size=1, latent_seed=0, max_text_tokens=64, max_lyric_tokens=64)
    with pytest.raises(KeyboardInterrupt):
        ds_mod.build_cache(pipe, records, tmp_path / "cache", **kw)
    assert len(json.loads((tmp_path / "cache" / "manifest.json").read_text())["clips"]) == 1
    monkeypatch.setattr(ds_mod, "compute_entries", real)
    resumed = ds_mod.build_cache(pipe, records, tmp_path / "cache", **kw)
    assert resumed["reused"] == 1 and resumed["computed"] == 2


def test_missing_sidecar_names_the_file(tmp_path):
    cfg = make_cfg(tmp_path)
    write_corpus(cfg, {"trk_x": [0.5]})
    (Path(cfg.paths.annotations) / "trk_x__000.json").unlink()
    with pytest.raises(DataError, match="trk_x__000.json is missing"):
        ds_mod.load_records(cfg.paths.clips, cfg.paths.annotations)


def test_cache_reader_refuses_missing_and_corrupt_entries(built, tmp_path):
    """The one cache reader checks each file against the manifest's sha256 and names the file or clip."""
    import shutil

    cfg, _ = built
    cache = tmp_path / "cache"
    shutil.copytree(cfg.paths.cache, cache)
    ids = sorted(json.loads((cache / "manifest.json").read_text())["clips"])
    tensors, digests = ds_mod.read_cache(cache, ids)
    assert list(tensors) == ids and set(tensors[ids[0]]) == set(ds_mod.CACHE_KEYS)
    with pytest.raises(DataError, match="no cache entry for clip 'nope'"):
        ds_mod.read_cache(cache, ["nope"])
    victim = cache / f"{ids[0]}.safetensors"
    victim.write_bytes(victim.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(DataError, match=f"{victim.name}: sha256 differs"):
        ds_mod.read_cache(cache, ids)
