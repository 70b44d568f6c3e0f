"""Stage base_model and the backend API: tiny build, reload, generation, real-folder checks, inference parity."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from lofi_lora.model.encode import context_latents, encode_audio, encode_conditions, null_condition
from lofi_lora.model.load import COMPONENTS, load_pipeline, load_transformer, model_dir
from lofi_lora.model.stage import run_base_model
from lofi_lora.core.errors import ConfigError, ModelError
from helpers.config import real_config


def make_cfg(tmp: Path, model: str = "toy", **model_over):
    """The real config with `model` from conf/model/ (default: the seeded random-weight toy pipeline; the pretrained
    default is test_pretrained_default's) and `model_over` merged in, checked by the schema, outputs under `tmp`
    (presets stay the repo's)."""
    return real_config(tmp, f"model={model}", model=model_over)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny base model written by the stage function, and the cfg that wrote it."""
    torch.set_num_threads(2)
    cfg = make_cfg(tmp_path_factory.mktemp("tiny"))
    result = run_base_model(cfg)
    return cfg, result


@pytest.fixture(scope="module")
def pipe(tiny):
    cfg, _ = tiny
    return load_pipeline(cfg.model, cfg.paths.base_model)


def test_tiny_build_is_complete_and_deterministic(tiny, tmp_path):
    cfg, result = tiny
    base = Path(cfg.paths.base_model)
    manifest = json.loads((base / "manifest.json").read_text())
    assert manifest["source"] == "build" and manifest["weights_dir"] is None
    assert set(COMPONENTS) <= set(manifest["components"])
    assert result["mbytes"] < 20 and result["params"] > 0
    again = run_base_model(make_cfg(tmp_path))
    assert again["fingerprint"] == result["fingerprint"], "same seed must give the same bytes (DVC)"


def test_tokenizer_has_eos_pad_and_fits_vocab(tiny, pipe):
    cfg, _ = tiny
    tok = pipe.tokenizer
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    ids = tok("# Caption\nlofi hip hop, dusty vinyl<|endoftext|>").input_ids
    assert ids[-1] == tok.eos_token_id and max(ids) < pipe.text_encoder.config.vocab_size
    assert len(tok) <= cfg.model.build.vocab_size


def test_from_pretrained_generates_two_seconds(tiny):
    from diffusers import AceStepPipeline

    cfg, _ = tiny
    pipe = AceStepPipeline.from_pretrained(cfg.paths.base_model)
    assert pipe.latents_per_second == 25.0
    out = pipe(prompt="lofi hip hop, mellow rhodes", lyrics="[Instrumental]", audio_duration=2.0,
               num_inference_steps=2, generator=torch.Generator().manual_seed(0)).audios
    assert out.shape == (1, 2, 96000) and torch.isfinite(out).all() and out.abs().max() > 0


def test_silence_latent_is_vae_encoding_of_silence(pipe):
    with torch.no_grad():
        direct = pipe.vae.encode(torch.zeros(1, 2, 1920 * 150)).latent_dist.mean.transpose(1, 2)
    stored = pipe.condition_encoder.silence_latent
    assert stored.shape[1] == 15000
    torch.testing.assert_close(stored[:, :60], direct[:, :60], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stored[:, 7000:7010], direct[:, 75:76].expand(-1, 10, -1), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(stored[:, :1], stored[:, 7000:7001])  # the edge differs: a real encoding


def test_cached_tensors_equal_what_inference_feeds_the_dit(pipe):
    """encode_conditions (batched, per-sample metas) + context_latents == the DiT inputs of pipe(...) at batch 1."""
    seen = []
    hook = pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((kwargs["encoder_hidden_states"], kwargs["context_latents"])),
        with_kwargs=True)
    captions = ["lofi hip hop, dusty drums, warm rhodes", "jazzy night"]
    lyrics = ["[Instrumental]", "[verse]\nrain on the window"]
    metas = [dict(bpm=82, keyscale="A minor", timesignature="4"), dict(bpm=None, keyscale=None, timesignature="3")]
    durations = [3.0, 2.0]
    try:
        for c, ly, m, d in zip(captions, lyrics, metas, durations):
            pipe(prompt=c, lyrics=ly, audio_duration=d, num_inference_steps=1, max_lyric_length=512,
                 output_type="latent", **m)
    finally:
        hook.remove()
    states, mask = encode_conditions(
        pipe, captions, lyrics, bpm=[m["bpm"] for m in metas], keyscale=[m["keyscale"] for m in metas],
        timesignature=[m["timesignature"] for m in metas], duration_s=durations, max_lyric_tokens=512)
    for i, (ref_states, ref_context) in enumerate(seen):
        n = int(mask[i].sum())
        assert n == ref_states.shape[1]
        torch.testing.assert_close(states[i, :n], ref_states[0], atol=1e-5, rtol=1e-4)
        assert not states[i, n:].any()
        frames = ref_context.shape[1]
        torch.testing.assert_close(context_latents(pipe, frames)[0], ref_context[0])
    assert null_condition(pipe).shape == (1, 1, pipe.transformer.config.hidden_size)


def test_encode_audio_shapes_and_seeded_sampling(pipe):
    audio = torch.randn(2, 2, 24000 + 7) * 0.1  # not a whole number of frames: padded up
    gens = lambda: [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]  # noqa: E731
    a, b = encode_audio(pipe, audio, generator=gens()), encode_audio(pipe, audio, generator=gens())
    assert a.shape == (2, 13, pipe.transformer.config.audio_acoustic_hidden_dim)
    torch.testing.assert_close(a, b)
    mean = encode_audio(pipe, audio, sample=False)
    assert not torch.equal(a, mean)


def test_long_audio_is_encoded_in_tiles_matching_one_pass(pipe, monkeypatch):
    """Clips over 30 s go through the VAE in overlapping windows (bounded memory: a 240 s clip untiled reserved
    the whole of an H200), and the trimmed overlap makes the latents those of one pass."""
    assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_length == 48000 * 30
    # the same mechanism on 5 s windows with 1 s overlap (frame-aligned, as 30 s / 2 s are), so four windows cost
    # 9 s of audio, not 70; the last, ragged one (1000 samples) is a clip length that is no multiple of the VAE's hop
    monkeypatch.setattr(pipe.vae, "tile_sample_min_length", 48000 * 5)
    monkeypatch.setattr(pipe.vae, "tile_sample_overlap", 48000)
    audio = torch.randn(1, 2, 48000 * 9 + 1000) * 0.1
    windows = []
    hook = pipe.vae.encoder.register_forward_pre_hook(lambda _m, args: windows.append(args[0].shape[-1]))
    try:
        tiled = encode_audio(pipe, audio, sample=False)
    finally:
        hook.remove()
    monkeypatch.setattr(pipe.vae, "use_tiling", False)
    whole = encode_audio(pipe, audio, sample=False)
    assert len(windows) == 4 and max(windows) <= pipe.vae.tile_sample_min_length
    assert tiled.shape == whole.shape and tiled.shape[1:] == (9 * 25 + 1, pipe.transformer.config.audio_acoustic_hidden_dim)
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-5)


def test_local_folder_is_verified_and_referenced_not_copied(tiny, tmp_path):
    cfg, _ = tiny
    real = make_cfg(tmp_path, "ace_step_v15", source="diffusers", path=cfg.paths.base_model)
    run_base_model(real)
    base = Path(real.paths.base_model)
    assert sorted(p.name for p in base.iterdir()) == ["manifest.json"]
    assert model_dir(real.model, base) == Path(cfg.paths.base_model).resolve()
    transformer = load_transformer(real.model, base)
    assert transformer.config.is_turbo
    with pytest.raises(ModelError, match="model.variant"):
        run_base_model(make_cfg(tmp_path, "ace_step_v15_base", source="diffusers", path=cfg.paths.base_model))
    with pytest.raises(ModelError, match="written for model"):
        model_dir(cfg.model, base)


@pytest.mark.parametrize("path", ["???", "/nonexistent/ace-step"])
def test_missing_model_path_fails_fast_naming_the_key(tmp_path, path):
    with pytest.raises(ConfigError, match="model.path"):
        run_base_model(make_cfg(tmp_path, "ace_step_v15", source="diffusers", path=path))


def test_wrong_model_folder_names_key_and_component(tiny, tmp_path):
    cfg, _ = tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="model.path.*model_index.json"):
        run_base_model(make_cfg(tmp_path, "ace_step_v15", source="diffusers", path=str(empty)))
    broken = tmp_path / "broken"
    shutil.copytree(cfg.paths.base_model, broken)
    shutil.rmtree(broken / "condition_encoder")
    with pytest.raises(ModelError, match="model.path.*condition_encoder"):
        run_base_model(make_cfg(tmp_path, "ace_step_v15", source="diffusers", path=str(broken)))
    for f in (broken / "vae").glob("*.safetensors"):
        f.unlink()
    shutil.copytree(Path(cfg.paths.base_model) / "condition_encoder", broken / "condition_encoder")
    with pytest.raises(ModelError, match="vae/ has no .safetensors"):
        run_base_model(make_cfg(tmp_path, "ace_step_v15", source="diffusers", path=str(broken)))


def test_hub_source_needs_a_pinned_revision(tmp_path):
    cfg = make_cfg(tmp_path, "ace_step_v15", source="hub", hub_id="ACE-Step/acestep-v15-turbo-diffusers")
    with pytest.raises(ConfigError, match="model.revision"):
        run_base_model(cfg)


def test_changed_weights_are_detected_on_load(tiny, tmp_path):
    cfg, _ = tiny
    copy = tmp_path / "base"
    shutil.copytree(cfg.paths.base_model, copy)
    with open(copy / "transformer" / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(ModelError, match="changed since stage base_model"):
        model_dir(cfg.model, copy)
