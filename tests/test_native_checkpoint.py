"""Native (upstream) ACE-Step 1.5 checkpoints: layout rules, random-weight builder, conversion to diffusers, cache."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from lofi_lora.model.native import convert as nc
from lofi_lora.core.errors import ModelError

TINY_XL = dict(nc.SIZES["tiny"], dit=dict(nc.SIZES["tiny"]["dit"], hidden_size=40, intermediate_size=80,
                                          num_attention_heads=5, num_key_value_heads=1, encoder_hidden_size=32,
                                          encoder_intermediate_size=64, encoder_num_attention_heads=4,
                                          encoder_num_key_value_heads=2, num_hidden_layers=3))


def _params(shapes: dict, prefix: str) -> int:
    return sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix))


def test_layout_rules_give_upstreams_published_sizes():
    two_b = nc.native_shapes(nc.native_config_from(nc.SIZES["2b"]["dit"], "turbo"))
    xl = nc.native_shapes(nc.native_config_from(nc.SIZES["xl"]["dit"], "sft"))
    assert _params(two_b, "decoder.") == 1_575_458_880  # the 2B DiT's parameter count
    assert 4.0e9 < sum(math.prod(s) for s in xl.values()) < 5.0e9  # "about 4-5 B parameters"
    assert xl["decoder.condition_embedder.weight"] == (2560, 2048)
    assert xl["encoder.lyric_encoder.layers.7.mlp.gate_proj.weight"] == (6144, 2048)
    assert xl["decoder.layers.31.self_attn.k_proj.weight"] == (8 * 128, 2560)
    assert two_b["null_condition_emb"] == (1, 1, 2048) and xl["null_condition_emb"] == (1, 1, 2048)


@pytest.fixture(scope="module")
def native_2b(tmp_path_factory):
    root = tmp_path_factory.mktemp("native2b")
    name = nc.build(root, "tiny", "base", seed=3, dtype=torch.float32, device="cpu")
    return root, name


@pytest.fixture(scope="module")
def native_xl_sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("nativexl")
    name = nc.build(root, TINY_XL, "turbo", seed=4, dtype=torch.bfloat16, shard_mb=0.05, device="cpu")
    return root, name


def test_builder_writes_upstreams_native_layout(native_2b, native_xl_sharded):
    root, name = native_2b
    assert name == "acestep-v15-base"
    assert {p.name for p in root.iterdir()} >= {name, "vae", "Qwen3-Embedding-0.6B"}
    cfg = json.loads((root / name / "config.json").read_text())
    assert cfg["model_type"] == "acestep" and cfg["is_turbo"] is False and cfg["model_version"] == "base"
    silence = torch.load(root / name / "silence_latent.pt", weights_only=True)
    assert silence.shape == (1, cfg["timbre_hidden_dim"], nc.SILENCE_FRAMES)
    weights = load_file(root / name / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in weights.items()} == nc.native_shapes(cfg)

    xroot, xname = native_xl_sharded
    assert xname == "acestep-v15-xl-turbo"
    index = json.loads((xroot / xname / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (xroot / xname / "model.safetensors").exists()
    assert all(v.dtype == torch.bfloat16 for v in nc.read_native_weights(xroot / xname).values())


def test_2b_conversion_maps_every_key_and_loads_in_diffusers(native_2b, tmp_path):
    from diffusers import AceStepPipeline

    root, name = native_2b
    out = tmp_path / "diffusers"
    summary = nc.convert(root, name, out)
    native = nc.read_native_weights(root / name)
    assert sum(summary["keys"].values()) == len(native) + 1  # + the silence latent buffer
    assert summary["loading"] == summary["keys"]
    pipe = AceStepPipeline.from_pretrained(str(out), dtype=torch.float32)
    assert pipe.transformer.config.model_version == "base" and not pipe.is_turbo
    torch.testing.assert_close(pipe.transformer.layers[1].cross_attn.to_out[0].weight,
                               native["decoder.layers.1.cross_attn.o_proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(pipe.transformer.proj_in_conv.weight, native["decoder.proj_in.1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(pipe.condition_encoder.null_condition_emb, native["null_condition_emb"], rtol=0, atol=0)
    silence = torch.load(root / name / "silence_latent.pt", weights_only=True)
    torch.testing.assert_close(pipe.condition_encoder.silence_latent, silence.transpose(1, 2), rtol=0, atol=0)
    assert pipe.audio_tokenizer is not None and pipe.audio_token_detokenizer is not None
    assert pipe.scheduler.config.num_train_timesteps == 1 and pipe.scheduler.config.shift == 1.0
    ids = pipe.tokenizer(["lofi piano"], return_tensors="pt").input_ids
    assert pipe.text_encoder(input_ids=ids).last_hidden_state.shape[-1] == pipe.condition_encoder.config.text_hidden_dim


def test_sharded_xl_conversion_keeps_the_narrow_condition_encoder_and_its_cls_token(native_xl_sharded, tmp_path):
    from diffusers import AceStepConditionEncoder, AceStepPipeline

    from lofi_lora.model.xl import AceStepXLConditionEncoder, stock_xl_warning

    root, name = native_xl_sharded
    out = tmp_path / "diffusers"
    assert nc.convert(root, name, out)["xl"] is True
    pipe = AceStepPipeline.from_pretrained(str(out), dtype=torch.float32)
    assert pipe.is_turbo and pipe.transformer.config.encoder_hidden_size == 32
    assert pipe.transformer.config.hidden_size == 40 and pipe.condition_encoder.config.hidden_size == 32
    assert isinstance(pipe.condition_encoder, AceStepXLConditionEncoder)
    # The CLS token decides the timbre embedding (upstream XL); diffusers' own class ignores it.
    stock = AceStepConditionEncoder.from_pretrained(str(out / "condition_encoder"), dtype=torch.float32)
    timbre = pipe.condition_encoder.silence_latent[:, :6].float()
    with torch.no_grad():
        before = pipe.condition_encoder.timbre_encoder(timbre, torch.zeros(1, dtype=torch.long))[0]
        stock_before = stock.timbre_encoder(timbre, torch.zeros(1, dtype=torch.long))[0]
        for enc in (pipe.condition_encoder, stock):
            enc.timbre_encoder.special_token.add_(1.0)
        after = pipe.condition_encoder.timbre_encoder(timbre, torch.zeros(1, dtype=torch.long))[0]
        stock_after = stock.timbre_encoder(timbre, torch.zeros(1, dtype=torch.long))[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(stock_before, stock_after)
    # A diffusers-format XL folder with the stock class (converted elsewhere) is flagged by stage base_model.
    assert stock_xl_warning(out) is None
    index = json.loads((out / "model_index.json").read_text())
    index["condition_encoder"] = ["diffusers", "AceStepConditionEncoder"]
    (out / "model_index.json").write_text(json.dumps(index))
    assert "CLS token" in stock_xl_warning(out)


def test_unmapped_or_missing_native_keys_are_named(native_2b, tmp_path):
    import shutil

    root, name = native_2b
    bad = tmp_path / "bad"
    shutil.copytree(root, bad, ignore=shutil.ignore_patterns("lofi-lora-diffusers"))
    weights = load_file(bad / name / "model.safetensors")
    weights["decoder.extra_head.weight"] = torch.zeros(2, 2)
    save_file(weights, str(bad / name / "model.safetensors"))
    with pytest.raises(ModelError, match="decoder.extra_head.weight"):
        nc.convert(bad, name, tmp_path / "out1")
    del weights["decoder.extra_head.weight"], weights["encoder.timbre_encoder.special_token"]
    save_file(weights, str(bad / name / "model.safetensors"))
    with pytest.raises(ModelError, match=r"condition_encoder: missing \['timbre_encoder.special_token'\]"):
        nc.convert(bad, name, tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_conversion_is_cached_by_content_next_to_the_checkpoint(native_2b, tmp_path):
    import shutil

    src, name = native_2b
    root = tmp_path / "checkpoints"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("lofi-lora-diffusers"))
    first, rec = nc.converted_pipeline(root, name)
    assert first.parent == root / nc.CACHE_DIR and first.name.startswith(name + "-")
    stamp = (first / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    again, _ = nc.converted_pipeline(root / name)  # the variant folder itself works too
    assert again == first
    assert (first / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert rec["inputs"][f"{name}/config.json"]["sha256"]
    cfg = json.loads((root / name / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (root / name / "config.json").write_text(json.dumps(cfg))
    changed, _ = nc.converted_pipeline(root, name)
    assert changed != first and changed.is_dir()


def test_stage_base_model_takes_a_native_checkpoint(native_2b, tmp_path):
    import shutil

    from lofi_lora.model.load import load_pipeline, weights_digest
    from lofi_lora.model.stage import run_base_model

    src, name = native_2b
    root = tmp_path / "checkpoints"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("lofi-lora-diffusers"))
    cfg = OmegaConf.create({"seed": 0, "paths": {"base_model": str(tmp_path / "base"), "presets": "presets"},
                            "model": {"name": "ace_step_v15_base", "source": "native", "path": str(root),
                                      "native_dir": name, "converted_dir": None, "variant": "base"}})
    result = run_base_model(cfg)
    assert result["source"] == "native" and result["files"] > 10
    manifest = json.loads((tmp_path / "base" / "manifest.json").read_text())
    assert manifest["native_dir"] == name and manifest["weights_dir"].startswith(str(root / nc.CACHE_DIR))
    pipe = load_pipeline(cfg.model, tmp_path / "base")
    assert pipe.transformer.config.model_version == "base"
    assert pipe.audio_tokenizer is None  # converted, but not loaded for text2music
    assert weights_digest(tmp_path / "base") == manifest["fingerprint"]
    cfg.model.variant = "turbo"
    with pytest.raises(ModelError, match="model_version='base'"):
        run_base_model(cfg)


def test_switching_variant_changes_the_weights_fingerprint_that_keys_cached_conditions(tmp_path):
    from lofi_lora.model.load import weights_digest
    from lofi_lora.model.stage import run_base_model

    root = tmp_path / "checkpoints"
    fps = {}
    for variant, seed in (("sft", 1), ("base", 2), ("sft", 1)):
        name = nc.build(root, "tiny", variant, seed=seed, dtype=torch.float32, device="cpu")
        cfg = OmegaConf.create({"seed": 0, "paths": {"base_model": str(tmp_path / f"base-{variant}"), "presets": "presets"},
                                "model": {"name": f"m_{variant}", "source": "native", "path": str(root),
                                          "native_dir": name, "variant": variant}})
        run_base_model(cfg)
        fps.setdefault(variant, set()).add(weights_digest(tmp_path / f"base-{variant}"))
    assert len(fps["sft"]) == 1  # rebuilt with the same seed: same content, same key, cache reused
    assert fps["sft"] != fps["base"]  # dataset.input_hash takes this fingerprint: a new variant recomputes


@pytest.mark.parametrize("size", ["2b", "xl"])
def test_real_size_layouts_map_onto_diffusers_models_key_for_key(size):
    """At full 2B / XL size, on the meta device (no memory): the mapping the converter checks before writing."""
    cfg = nc.native_config_from(nc.SIZES[size]["dit"], "turbo")
    mapped: dict[str, dict] = {}
    for key, shape in nc.native_shapes(cfg).items():
        comp, new = nc.diffusers_key(key)
        mapped.setdefault(comp, {})[new] = shape
    mapped["condition_encoder"]["silence_latent"] = (1, nc.SILENCE_FRAMES, 64)
    configs, classes = nc.component_configs(cfg), nc.component_classes(cfg)
    expected = {}
    for comp, cls in classes.items():
        with torch.device("meta"):
            expected[comp] = {k: tuple(v.shape) for k, v in cls(**configs[comp]).state_dict().items()}
    nc._check_against(expected, mapped, {})  # raises naming any missing / unexpected / mis-shaped key
    assert sum(len(v) for v in expected.values()) == len(nc.native_shapes(cfg)) + 1


def test_bad_native_folders_fail_with_one_clear_line(native_2b, tmp_path):
    import shutil

    from lofi_lora.core.errors import ConfigError

    src, name = native_2b
    with pytest.raises(ConfigError, match="model.path"):
        nc.converted_pipeline(tmp_path / "nowhere", name)
    with pytest.raises(ConfigError, match="model.native_dir"):
        nc.converted_pipeline(src, None)
    root = tmp_path / "checkpoints"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("lofi-lora-diffusers", "vae"))
    with pytest.raises(ModelError, match="folder vae/ is missing"):
        nc.converted_pipeline(root, name)
    shutil.copytree(src / "vae", root / "vae")
    torch.save(torch.zeros(1, 15000, 8), root / name / "silence_latent.pt")  # [1, T, C]: not upstream's [1, C, T]
    with pytest.raises(ModelError, match=r"silence_latent.pt: expected a \[1, 8, T\] tensor"):
        nc.converted_pipeline(root, name)
    ro = tmp_path / "read-only"
    ro.mkdir(mode=0o555)
    if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file instead
        ro = root / name / "config.json"
    with pytest.raises(ConfigError, match="model.converted_dir"):
        nc.converted_pipeline(src, name, cache_dir=ro / "cache")
    (root / name / "model.safetensors").rename(root / name / "weights.bin")
    with pytest.raises(ModelError, match="neither model.safetensors nor model.safetensors.index.json"):
        nc.converted_pipeline(root, name)


def test_variant_follows_is_turbo_and_the_folder_when_model_version_keeps_upstreams_default(native_2b, tmp_path, caplog):
    """Upstream's config class defaults `model_version` to "turbo": a real base checkpoint may carry it. The
    conversion is taken as `model.variant`=base (is_turbo=False and the folder agree) with a warning; is_turbo and
    the folder name still refuse a wrong `model=`."""
    import logging
    import shutil

    from lofi_lora.model.load import verify_pipeline_dir

    src, name = native_2b
    root = tmp_path / "checkpoints"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("lofi-lora-diffusers"))
    cfg_f = root / name / "config.json"
    native = json.loads(cfg_f.read_text())
    assert native["is_turbo"] is False and name == "acestep-v15-base"
    cfg_f.write_text(json.dumps({**native, "model_version": "turbo"}))
    folder, _ = nc.converted_pipeline(root, name)
    with caplog.at_level(logging.WARNING, logger="lofi_lora.model.load"):
        verify_pipeline_dir(folder, "base")
    assert "model_version='turbo'" in caplog.text and "upstream's default" in caplog.text
    with pytest.raises(ModelError, match="is_turbo=False"):
        verify_pipeline_dir(folder, "turbo")
    with pytest.raises(ModelError, match="upstream's 'base' checkpoint"):
        verify_pipeline_dir(folder, "sft")
