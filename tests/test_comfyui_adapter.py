"""The ComfyUI file: every key lands on a module of the ACE-Step 1.5 DiT under ComfyUI's loader rules, and strength
1.0 gives the trained scale (ComfyUI issue #12374: without a per-layer alpha the scale silently becomes 1.0).

ComfyUI's rules, restated from its source (comfy/lora.py `model_lora_keys_unet` + `load_lora`,
comfy/weight_adapter/lora.py `LoRAAdapter`): for a comfy.model_base.ACEStep15 model, each model weight
`diffusion_model.decoder.<m>.weight` is reachable under the LoRA name `base_model.model.<m>`; the adapter of name x
is `x.lora_B.weight` (up) and `x.lora_A.weight` (down), with the optional scalar `x.alpha`; the patch is
`W += strength * (alpha / rows(down) if alpha else 1.0) * up @ down`; keys no name claims are "not loaded".
The model's key list is test data (tests/data/comfyui_ace_step15_decoder_keys.txt).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lofi_lora.train import adapters
from lofi_lora.train.state import add_lora, lora_params

from helpers.config import real_section
from helpers.workspace import tiny_transformer, widths

KEYS_FILE = Path(__file__).parent / "data" / "comfyui_ace_step15_decoder_keys.txt"
ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
MLP = ["gate_proj", "up_proj", "down_proj"]
TO_DIFFUSERS = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "o_proj": "to_out.0"}


def comfy_model_keys() -> dict[str, tuple[int, ...]]:
    rows = [ln.split() for ln in KEYS_FILE.read_text().splitlines() if ln and not ln.startswith("#")]
    return {k: tuple(int(d) for d in shape.split("x")) for k, shape in rows}


def comfy_key_map(model_keys) -> dict[str, str]:
    """ComfyUI's ACEStep15 branch: `base_model.model.<m>` -> `diffusion_model.decoder.<m>.weight`."""
    prefix = "diffusion_model.decoder."
    return {f"base_model.model.{k[len(prefix):-len('.weight')]}": k for k in model_keys
            if k.startswith(prefix) and k.endswith(".weight")}


def comfy_load(lora: dict[str, torch.Tensor], key_map: dict[str, str]) -> tuple[dict, set[str]]:
    """{model weight key: (up, down, alpha)} as ComfyUI's loader builds it, and the keys it left unloaded."""
    patches, loaded = {}, set()
    for x, target in key_map.items():
        if f"{x}.lora_B.weight" not in lora:
            continue
        alpha = lora[f"{x}.alpha"].item() if f"{x}.alpha" in lora else None
        patches[target] = (lora[f"{x}.lora_B.weight"], lora[f"{x}.lora_A.weight"], alpha)
        loaded |= {f"{x}.lora_B.weight", f"{x}.lora_A.weight"} | ({f"{x}.alpha"} if alpha is not None else set())
    return patches, set(lora) - loaded


def comfy_delta(up, down, alpha, strength=1.0) -> torch.Tensor:
    scale = alpha / down.shape[0] if alpha is not None else 1.0
    return strength * scale * (up @ down)


def test_every_key_maps_onto_the_15_model_with_matching_shapes(tmp_path):
    """A rank-4 adapter on every attention and MLP projection of the real 2B DiT (24 layers), shapes from the model."""
    model_keys = comfy_model_keys()
    prefix, r = "diffusion_model.decoder.", 4
    state = {}
    for k, shape in model_keys.items():
        module = k[len(prefix):-len(".weight")]
        name = module.rsplit(".", 1)[-1]
        if ".layers." not in k or not k.endswith(".weight") or not (name in TO_DIFFUSERS or name in MLP):
            continue
        diff = module.rsplit(".", 1)[0] + "." + TO_DIFFUSERS.get(name, name)
        state[f"{diff}.lora_A.weight"] = torch.full((r, shape[1]), 0.01)
        state[f"{diff}.lora_B.weight"] = torch.full((shape[0], r), 0.02)
    assert len(state) == 24 * (8 + 3) * 2
    path = adapters.save_comfyui_adapter(state, tmp_path / "x.safetensors", r=r, alpha=8, rslora=False)
    lora = load_file(str(path))
    patches, unloaded = comfy_load(lora, comfy_key_map(model_keys))
    assert unloaded == set()  # ComfyUI would log "lora key not loaded" for each
    assert len(patches) == 24 * 11
    for target, (up, down, alpha) in patches.items():
        assert (up.shape[0], down.shape[1]) == model_keys[target], target
        assert alpha == pytest.approx(8.0)  # alpha / r = 2 = the trained scale


@pytest.mark.parametrize("r,alpha,rslora", [(4, 8, False), (4, 16, True)])
def test_strength_one_gives_the_trained_model(tmp_path, r, alpha, rslora):
    """Patch the base DiT exactly as ComfyUI does at strength 1.0: its output equals the trained PEFT model's."""
    trained = tiny_transformer(0)
    add_lora(trained, real_section("lora", r=r, alpha=alpha, rslora=rslora, dropout=0.0, target_modules=ATTN + MLP))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in lora_params(trained).items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    trained.eval()
    out_dir = adapters.save_comfyui_folder(adapters.adapter_state_dict(trained), tmp_path / "comfyui",
                                           variant="turbo", r=r, alpha=alpha, rslora=rslora, dropout=0.0)
    (path,) = sorted((tmp_path / "comfyui").iterdir())
    assert path == out_dir and path.name == "lofi-lora_ace-step-v15-turbo.safetensors"
    lora = load_file(str(path))

    base = tiny_transformer(0).eval()
    sd = base.state_dict()
    model_keys = {f"diffusion_model.decoder.{k}" for k in sd}  # the tiny model under ComfyUI's prefix ...
    for up, diff in TO_DIFFUSERS.items():  # ... and upstream's names for the attention projections
        model_keys = {k.replace(f".{diff}.", f".{up}.") for k in model_keys}
    patches, unloaded = comfy_load(lora, comfy_key_map(model_keys))
    assert unloaded == set() and len(patches) == len(base.layers) * (2 * len(ATTN) + len(MLP))  # self + cross
    no_alpha = {}
    with torch.no_grad():
        for target, (up, down, a) in patches.items():
            key = target[len("diffusion_model.decoder."):]
            for up_name, diff in TO_DIFFUSERS.items():
                key = key.replace(f".{up_name}.", f".{diff}.")
            no_alpha[key] = sd[key] + comfy_delta(up, down, None)
            sd[key] = sd[key] + comfy_delta(up, down, a, strength=1.0)
    base.load_state_dict(sd)
    w, g = widths(base), torch.Generator().manual_seed(3)
    t = torch.tensor([0.75, 0.3])
    x = dict(hidden_states=torch.randn(2, 14, w.latent, generator=g), timestep=t, timestep_r=t,
             encoder_hidden_states=torch.randn(2, 6, w.cond, generator=g),
             context_latents=torch.randn(2, 14, w.context, generator=g))
    with torch.no_grad():
        expected = trained(**x, return_dict=False)[0]
        got = base(**x, return_dict=False)[0]
        base.load_state_dict({**sd, **no_alpha})
        without_alpha = base(**x, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the bug this file avoids: the same tensors without `.alpha` apply scale 1.0, a different model
    assert (without_alpha - expected).abs().max() > 10 * (got - expected).abs().max() + 1e-4
