"""Adapter files: diffusers reload gives the training model's output (trained strength kept), PEFT folder format."""
from __future__ import annotations

import json
import re

import pytest
import torch
from helpers.config import real_section
from helpers.workspace import adapter_pipeline, dit_inputs, tiny_transformer
from lofi_lora.train import adapters
from lofi_lora.train.state import add_lora, lora_params

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _trained_model(r: int, alpha: float, rslora: bool):
    """The tiny DiT with a LoRA whose B is non-zero (as after training)."""
    model = tiny_transformer(0)
    add_lora(model, real_section("lora", r=r, alpha=alpha, rslora=rslora, dropout=0.0, target_modules=TARGETS))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in lora_params(model).items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("r,alpha,rslora,bake", [(4, 8, False, True), (4, 1, True, True), (8, 32, True, False)])
def test_diffusers_reload_equals_training_model(tmp_path, r, alpha, rslora, bake):
    model = _trained_model(r, alpha, rslora)
    x = dit_inputs()
    with torch.no_grad():
        expected = model(**x, return_dict=False)[0]
        base = tiny_transformer(0)(**x, return_dict=False)[0]
    state = adapters.adapter_state_dict(model)
    adapters.save_diffusers_adapter(state, tmp_path, r=r, alpha=alpha, rslora=rslora, dropout=0.0,
                                    target_modules=TARGETS, bake=bake)
    pipe = adapters.load_into_pipeline(adapter_pipeline(), tmp_path)
    with torch.no_grad():
        got = pipe.transformer(**x, return_dict=False)[0]
    assert (expected - base).abs().max() > 1e-2  # the adapter changes the output noticeably
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    info = adapters.read_info(tmp_path)
    assert info["trained_r"] == r and info["trained_alpha"] == alpha and info["trained_rslora"] == rslora
    assert info["baked"] is bake and info["baked_scale"] == pytest.approx(
        adapters.lora_scale(r, alpha, rslora) if bake else 1.0)


def test_baked_file_keeps_strength_without_metadata(tmp_path):
    """A loader that ignores the metadata (scale 1.0, e.g. ComfyUI) still gets the trained strength."""
    from safetensors.torch import load_file

    model = _trained_model(4, 16, True)  # scale 16/sqrt(4) = 8
    x = dit_inputs()
    with torch.no_grad():
        expected = model(**x, return_dict=False)[0]
    adapters.save_diffusers_adapter(adapters.adapter_state_dict(model), tmp_path, r=4, alpha=16, rslora=True,
                                    dropout=0.0, target_modules=TARGETS)
    plain = load_file(str(tmp_path / adapters.DIFFUSERS_WEIGHT_NAME))  # tensors only, no header
    pipe = adapter_pipeline()
    pipe.load_lora_weights(plain)
    assert pipe.transformer.layers[0].self_attn.to_q.scaling["default_0"] == 1.0
    with torch.no_grad():
        got = pipe.transformer(**x, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_peft_folder_upstream_format(tmp_path):
    model = _trained_model(4, 8, True)
    state = adapters.adapter_state_dict(model)
    out = adapters.save_peft_adapter(state, tmp_path / "peft", r=4, alpha=8, rslora=True, dropout=0.1,
                                     target_modules=TARGETS, base_model="acestep-v15-turbo")
    config = json.loads((out / adapters.PEFT_CONFIG_NAME).read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 8, True)
    assert config["peft_type"] == "LORA" and sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    from safetensors.torch import load_file

    tensors = load_file(str(out / adapters.PEFT_WEIGHT_NAME))
    pattern = re.compile(r"^base_model\.model\.layers\.\d+\.(self_attn|cross_attn)\.[qkvo]_proj\.lora_[AB]\.weight$")
    assert len(tensors) == len(state) == len(model.layers) * 2 * 4 * 2  # (self, cross) x q k v o x (A, B)
    assert all(pattern.match(k) for k in tensors), sorted(tensors)[:4]
    # PEFT reads the config back with the trained strength
    from peft import LoraConfig

    cfg = LoraConfig.from_pretrained(str(out))
    assert cfg.lora_alpha / cfg.r ** 0.5 == pytest.approx(adapters.lora_scale(4, 8, True))
    # diffusers' own converter of upstream 1.5 files maps every key back to ours, tensors unchanged
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_ace_step_lora_to_diffusers

    back = _convert_non_diffusers_ace_step_lora_to_diffusers(dict(tensors))
    assert {k.removeprefix("transformer."): v for k, v in back.items()}.keys() == state.keys()
    for k, v in back.items():
        assert torch.equal(v, state[k.removeprefix("transformer.")])


def test_unmappable_module_is_a_clear_error():
    with pytest.raises(Exception, match="no upstream ACE-Step 1.5 name"):
        adapters.to_upstream_key("layers.0.proj_in_conv.lora_A.weight")


def test_load_into_pipeline_names_missing_file(tmp_path):
    with pytest.raises(Exception, match="pytorch_lora_weights.safetensors"):
        adapters.load_into_pipeline(adapter_pipeline(), tmp_path)


def test_adapter_file_bytes_are_reproducible_across_processes(tmp_path):
    """safetensors orders its metadata randomly per process; our writer must not (DVC hashes bytes)."""
    import subprocess
    import sys

    code = ("import torch, sys; from lofi_lora.train.adapters import save_diffusers_adapter; "
            "g = torch.Generator().manual_seed(0); "
            "s = {f'layers.{i}.attn.to_q.lora_{ab}.weight': torch.randn(4, 4, generator=g) "
            "for i in range(3) for ab in 'AB'}; "
            "save_diffusers_adapter(s, sys.argv[1], r=4, alpha=8, rslora=True, dropout=0.0, target_modules=['to_q'])")
    digests = set()
    for i in range(3):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / str(i))], check=True, timeout=120)
        digests.add((tmp_path / str(i) / adapters.DIFFUSERS_WEIGHT_NAME).read_bytes())
    assert len(digests) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0" / adapters.DIFFUSERS_WEIGHT_NAME), "pt") as f:
        assert f.metadata()["format"] == "pt" and len(list(f.keys())) == 6
