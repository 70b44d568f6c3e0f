"""Stage evaluate end to end on a tiny ACE-Step 1.5 pipeline built here (base model, dataset, cache, checkpoints)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.config import real_config
from lofi_lora.data import audio as audio_io
from lofi_lora.core.errors import ConfigError
from lofi_lora.dataset.holdout import prompt_set
from lofi_lora.evaluate.stage import ModelEval, pick_best, run_evaluate
from lofi_lora.model.variants import TABLE, sampling_settings
from lofi_lora.core.fsutil import sha256_file

CAPTIONS = ["lofi hip hop, dusty piano, vinyl crackle", "chill beat, warm bass, rain",
            "mellow jazz guitar, tape hiss", "slow lofi, soft drums, night"]



def _cfg(root: Path):
    paths = {k: str(root / k) for k in ("clips", "dataset", "cache", "base_model", "lora", "metrics", "plots",
                                        "reports")}
    return real_config(root, paths=paths,
                       eval={"num_prompts": 2, "seeds": [0, 1], "duration_s": 2.0, "last_n": 2, "fad_inf_points": 3,
                             "embedding": "vggish", "vggish_path": None, "clap_path": str(root / "clap"),
                             "clap_min_vocab": 100, "best_metric": "val_loss", "best_mode": "min"})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from lofi_lora.train.adapters import adapter_state_dict, save_diffusers_adapter
    from lofi_lora.model.load import load_pipeline, weights_digest
    from lofi_lora.model.stage import run_base_model
    from lofi_lora.train.checkpoints import CheckpointStore
    from lofi_lora.dataset.stage import build_cache, build_dataset
    from lofi_lora.train.state import add_lora

    from test_clap import build_tiny_clap

    root = tmp_path_factory.mktemp("eval")
    cfg = _cfg(root)
    build_tiny_clap(root / "clap")
    run_base_model(cfg)
    sr, rng = 48000, np.random.default_rng(0)
    records = []
    for i in range(4):
        t = np.arange(int(3.0 * sr)) / sr
        y = 0.3 * np.sin(2 * np.pi * (110 * (i + 1)) * t) + 0.05 * rng.normal(size=t.size)
        wav = root / "clips" / "wav" / f"t{i}__000.wav"
        audio_io.write(wav, np.stack([y, y]).astype(np.float32), sr)
        records.append({"clip_id": f"t{i}__000", "track_id": f"t{i}", "audio": {"path": str(wav), "sampling_rate": sr},
                        "caption": CAPTIONS[i], "lyrics": "[Instrumental]", "style_id": "CORE-01",
                        "style_ids": ["CORE-01"], "duration": 3.0, "bpm": 80.0 + i, "keyscale": "A minor",
                        "timesignature": "4", "vocal_language": "en"})
    build_dataset(records, {"t0", "t1", "t2"}, 1).save_to_disk(str(root / "dataset"))
    pipe = load_pipeline(cfg.model, cfg.paths.base_model)
    held = records[:3]
    build_cache(pipe, held, root / "cache", weights_hash=weights_digest(cfg.paths.base_model), batch_size=2,
                latent_seed=0, max_text_tokens=256, max_lyric_tokens=512)
    tr = pipe.transformer
    add_lora(tr, cfg.lora)
    store = CheckpointStore(root / "lora" / "checkpoints")
    torch.manual_seed(0)
    for step, scale in ((5, 0.02), (10, 0.05), (15, 0.2)):
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.data = scale * torch.randn_like(p)
        state = adapter_state_dict(tr)

        def write(d, state=state):
            save_diffusers_adapter(state, d, r=int(cfg.lora.r), alpha=float(cfg.lora.alpha),
                                   rslora=bool(cfg.lora.rslora), dropout=0.0,
                                   target_modules=list(cfg.lora.target_modules), bake=False)
            torch.save({"step": step}, d / "training_state.pt")

        store.save(step, write, config_hash="test", scores={"train_loss": 1.0 / step}, keep_last=5)
    ckpt_hashes = {p.relative_to(root): sha256_file(p) for p in (root / "lora" / "checkpoints").rglob("*") if p.is_file()}
    result = run_evaluate(cfg)
    return root, cfg, result, ckpt_hashes


def test_evaluate_outputs(workspace):
    root, cfg, result, ckpt_hashes = workspace
    m = json.loads((root / "metrics" / "eval.json").read_text())["eval"]
    # headline figures of the best checkpoint, the base model's beside them (dvc exp show: eval.val_loss, ...)
    for k in ("val_loss", "fd_logmel128_v1", "fd_logmel128_v1_inf", "kad_logmel128_v1"):
        assert isinstance(m[k], float) and isinstance(m["base"][k], float), k
    # VGGish configured without weights: a null, never a number; log-mel FD is still there
    assert m["fad_vggish"] is None and m["fad_vggish_inf"] is None and m["kad_vggish"] is None
    # CLAP (tiny random model from a local folder) with both baselines beside it
    for k in ("clap_score", "clap_score_shuffled", "clap_score_holdout"):
        assert -1.0 <= m[k] <= 1.0 and -1.0 <= m["base"][k] <= 1.0, k
    assert m["clap_score_holdout"] == m["base"]["clap_score_holdout"]
    assert m["best_step"] in (10, 15) and result["num_checkpoints"] == 2  # last_n = 2 of 3
    base_scores = json.loads((root / "lora" / "best" / "scores.json").read_text())["base"]["scores"]
    assert base_scores["fd_logmel128_v1_n_clips"] == 4  # 2 prompts x 2 seeds
    assert result["best_step"] == m["best_step"]
    assert not any(isinstance(v, str) for v in m.values())  # reasons and labels live in the report
    scores = json.loads((root / "lora" / "best" / "scores.json").read_text())
    vl = {e["step"]: e["scores"].get("val_loss") for e in scores["checkpoints"]}
    assert vl[5] is None and vl[10] != vl[15] and scores["base"]["scores"]["val_loss"] not in (vl[10], vl[15])
    assert scores["checkpoints"][0]["scores"]["train_loss"] == pytest.approx(0.2)  # train's scores kept
    best_step = min((10, 15), key=lambda s: (vl[s], -s))
    assert scores["best_step"] == best_step
    # samples (eval.sample=base_and_best): the base and the best checkpoint, 4 each, 48 kHz stereo of the requested
    # duration; the other checkpoint has its val_loss and null sample metrics with the reason
    other = ({10, 15} - {best_step}).pop()
    for label in ("base", f"{best_step:06d}"):
        files = sorted((root / "lora" / "samples" / label).glob("*.wav"))
        assert len(files) == 4, label
        info = audio_io.info(files[0])
        assert info.sample_rate == 48000 and info.channels == 2 and abs(info.duration_s - 2.0) < 0.1
    assert not (root / "lora" / "samples" / "000005").exists()
    assert not (root / "lora" / "samples" / f"{other:06d}").exists()
    unsampled = next(e["scores"] for e in scores["checkpoints"] if e["step"] == other)
    assert unsampled["fd_logmel128_v1"] is None and "not sampled" in unsampled["fd_logmel128_v1_reason"]
    # intervals: each distance inside its own bootstrap interval; best minus base with its paired interval
    for k in ("fd_logmel128_v1", "kad_logmel128_v1"):
        assert m[f"{k}_low"] <= m[k] <= m[f"{k}_high"] and m["base"][f"{k}_low"] <= m["base"][k] <= m["base"][f"{k}_high"]
        assert m["vs_base"][f"{k}_low"] <= m["vs_base"][k] <= m["vs_base"][f"{k}_high"]
        assert m["vs_base"][k] == pytest.approx(m[k] - m["base"][k], rel=1e-3, abs=1e-9)
        assert m["real"][k] < m["noise"][k]
    # the adapter changes the model: checkpoint samples and losses differ from the base model's
    a, _ = audio_io.read(root / "lora" / "samples" / "base" / "p00_s0.wav")
    b, _ = audio_io.read(root / "lora" / "samples" / f"{best_step:06d}" / "p00_s0.wav")
    assert np.abs(a - b).max() > 1e-4
    # best/ has the checkpoint's layout and bytes
    src = root / "lora" / "checkpoints" / f"checkpoint-{best_step:06d}"
    for f in src.iterdir():
        assert sha256_file(root / "lora" / "best" / f.name) == sha256_file(f)
    # train's output untouched
    now = {p.relative_to(root): sha256_file(p) for p in (root / "lora" / "checkpoints").rglob("*") if p.is_file()}
    assert now == ckpt_hashes
    # plots and report
    rows = json.loads((root / "plots" / "eval" / "metrics.json").read_text())
    assert [r["step"] for r in rows] == [0, 10, 15]
    header = (root / "plots" / "eval" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "model"] and header[-1] == "val_loss"  # the selection metric: dvc's default y
    assert (root / "plots" / "eval" / "val_loss.png").stat().st_size > 1000
    html = (root / "reports" / "index.html").read_text()
    assert html.count("<audio") == 2 + 2 * 4 and "fd_logmel128_v1" in html and "Did the LoRA work?" in html
    assert "eval.vggish_path is null" in html  # why a metric is null: in the report beside it


def test_validation_loss_is_deterministic(workspace):
    from lofi_lora.model.load import load_pipeline
    from lofi_lora.dataset.stage import read_cache
    from lofi_lora.evaluate.stage import validation_loss

    root, cfg, _, _ = workspace
    pipe = load_pipeline(cfg.model, cfg.paths.base_model)
    cache = list(read_cache(root / "cache", ["t0__000", "t1__000", "t2__000"])[0].values())
    a = validation_loss(pipe.transformer, cache, [0.3, 0.7], seed=1234, device="cpu")
    b = validation_loss(pipe.transformer, cache, [0.3, 0.7], seed=1234, device="cpu")
    assert a == b and a["n_clips"] == 3 and a["val_loss"] > 0
    scores = json.loads((root / "lora" / "best" / "scores.json").read_text())
    full = validation_loss(pipe.transformer, cache, list(cfg.eval.val_timesteps), seed=1234, device="cpu")
    assert full["val_loss"] == pytest.approx(scores["base"]["scores"]["val_loss"], rel=1e-6)
    # the last checkpoint, loaded alone into a fresh pipeline, scores as in the run: no adapter leaked across models
    from lofi_lora.train.adapters import load_into_pipeline

    load_into_pipeline(pipe, root / "lora" / "checkpoints" / "checkpoint-000015")
    last = validation_loss(pipe.transformer, cache, list(cfg.eval.val_timesteps), seed=1234, device="cpu")
    ref = next(e for e in scores["checkpoints"] if e["step"] == 15)["scores"]["val_loss"]
    assert last["val_loss"] == pytest.approx(ref, rel=1e-6) and last["val_loss"] != full["val_loss"]


def test_sampling_table_and_prompt_set():
    assert sampling_settings("turbo") == {"num_inference_steps": 8, "shift": 3.0, "guidance_scale": 1.0}
    assert TABLE["base"].guidance_scale == 7.0 and TABLE["sft"].steps == 50 and not TABLE["sft"].turbo
    assert sampling_settings("base", {"num_inference_steps": 30})["num_inference_steps"] == 30
    with pytest.raises(ConfigError, match="model.variant"):
        sampling_settings("xl")
    rows = [{"clip_id": f"c{i}", "caption": f"cap {i}", "audio_path": f"/x/c{i}.wav"} for i in range(10)]
    a, b = prompt_set(rows, 4, seed=1), prompt_set(rows, 4, seed=1)
    assert [p.clip_id for p in a] == [p.clip_id for p in b] and len(a) == 4
    assert len(prompt_set(rows, 50, seed=1)) == 10


def test_clap_null_with_reason_when_not_configured(tmp_path):
    from lofi_lora.evaluate.stage import load_clap

    clap, reason = load_clap(None, 1000, "cpu")
    assert clap is None and reason == "no CLAP weights configured (eval.clap_path is null)"
    clap, reason = load_clap(str(tmp_path), 1000, "cpu")
    assert clap is None and "config.json missing" in reason


def test_unset_weight_path_is_a_config_error(tmp_path):
    from lofi_lora.evaluate.stage import check_weight_paths

    with pytest.raises(ConfigError, match="eval.vggish_path"):
        check_weight_paths(real_config(tmp_path, "eval=full", eval={"clap_path": None}).eval)
    check_weight_paths(real_config(tmp_path, "eval=full", eval={"clap_path": None, "vggish_path": None}).eval)


def test_pick_best_rules():
    from lofi_lora.core.records import Record
    from lofi_lora.metrics import metric

    def model(label, step, val_loss, reason=None):
        m = ModelEval(label, step, None if step == 0 else label)
        m.add(Record(metric("val_loss"), val_loss))
        if step:
            m.add(Record(metric("fad_vggish_inf"), None, reason))
        return m

    ms = [model("base", 0, 0.1), model("000010", 10, 0.5, "no VGGish weights configured"), model("000020", 20, 0.5)]
    assert pick_best(ms, "val_loss", "min").step == 20  # base never wins; ties -> later step
    assert pick_best(ms, "val_loss", "max").step == 20
    with pytest.raises(ConfigError, match=r"no value for any checkpoint \(no VGGish weights configured\)"):
        pick_best(ms, "fad_vggish_inf", "min")
    with pytest.raises(ConfigError, match="best_mode"):
        pick_best(ms, "val_loss", "lowest")


def test_validation_loss_is_the_training_loss_at_fixed_draws(workspace):
    """Validation calls training's objective: one clip at one timestep equals the pure loss with the same noise."""
    from lofi_lora.model.load import load_pipeline
    from lofi_lora.dataset.stage import read_cache
    from lofi_lora.evaluate.stage import validation_loss
    from lofi_lora.train.objective import flow_matching_loss

    root, cfg, _, _ = workspace
    pipe = load_pipeline(cfg.model, cfg.paths.base_model)
    clip = read_cache(root / "cache", ["t1__000"])[0]["t1__000"]
    noise = torch.randn(clip["target_latents"].shape, generator=torch.Generator().manual_seed(7))[None]
    with torch.no_grad():
        loss, frames = flow_matching_loss(pipe.transformer, {k: v[None] for k, v in clip.items()},
                                          torch.tensor([0.3]), noise)
    assert validation_loss(pipe.transformer, [clip], [0.3], seed=7, device="cpu")["val_loss"] == float(loss)
    assert int(frames) == clip["target_latents"].shape[0]
