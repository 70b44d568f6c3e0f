"""DoRA and LoKr beside LoRA (issue 27): each type's diffusers file, PEFT folder and ComfyUI file give the trained
model at strength 1.0, and the merge for export keeps it.

ComfyUI's rules for these types, restated from its source (comfy/weight_adapter/base.py `weight_decompose`,
comfy/weight_adapter/lokr.py, comfy/lora.py's ACEStep15 key map with `lycoris_` names since ComfyUI#12665):
- DoRA: `W' = (W + alpha/rank * up @ down) * dora_scale / (||W||_row + eps)` when dora_scale has one value per
  output row (the norm is the base weight's), strength 1.0 replacing W by W'.
- LoKr: `W += (alpha/dim if a factor is low-rank else 1.0) * kron(w1, w2)`, w1 = w1_a @ w1_b and w2 = w2_a @ w2_b
  where only the factors are given, dim = the rank of the last low-rank factor.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers.config import real_section
from helpers.workspace import adapter_pipeline, dit_inputs, tiny_transformer
from lofi_lora.train import adapters
from lofi_lora.train.state import add_lora, lora_params

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
TO_DIFFUSERS = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "o_proj": "to_out.0"}
LOKR = {"decompose_both": False, "decompose_factor": -1, "rank_dropout": 0.0, "module_dropout": 0.0}
# (type, r, alpha, lokr section): LoKr once with w2 full (r >= half the factor) and once with it low-rank
CASES = [("dora", 4, 8, None), ("lokr", 4, 8, LOKR), ("lokr", 2, 6, {**LOKR, "decompose_both": True})]


def _adapter(kind, lokr):
    return real_section("adapter", type=kind, lokr=lokr)


def trained(kind: str, r: int, alpha: float, lokr, seed: int = 7):
    """The tiny DiT with an adapter of `kind` whose every tensor is moved off its init (as after training)."""
    model = tiny_transformer(0)
    add_lora(model, real_section("lora", r=r, alpha=alpha, rslora=False, dropout=0.0, target_modules=ATTN),
             _adapter(kind, lokr))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_params(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _info(kind, r, alpha, lokr):
    return dict(r=r, alpha=alpha, rslora=False, dropout=0.0, target_modules=ATTN, adapter_type=kind, lokr=lokr)


def test_dora_and_lokr_are_peft_classes():
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    dora = trained("dora", 4, 8, None)
    assert isinstance(dora.layers[0].self_attn.to_q, LoraLayer) and dora.layers[0].self_attn.to_q.use_dora["default"]
    assert isinstance(trained("lokr", 4, 8, LOKR).layers[0].self_attn.to_q, LoKrLayer)
    assert any(k.endswith("lora_magnitude_vector") for k in lora_params(dora))


@pytest.mark.parametrize("kind,r,alpha,lokr", CASES)
@pytest.mark.parametrize("bake", [True, False])
def test_diffusers_file_reload_equals_training_model(tmp_path, kind, r, alpha, lokr, bake):
    model = trained(kind, r, alpha, lokr)
    x = dit_inputs()
    with torch.no_grad():
        expected = model(**x, return_dict=False)[0]
        base = tiny_transformer(0)(**x, return_dict=False)[0]
    adapters.save_diffusers_adapter(adapters.adapter_state_dict(model), tmp_path, bake=bake, **_info(kind, r, alpha, lokr))
    pipe = adapters.load_into_pipeline(adapter_pipeline(), tmp_path, adapter_name="eval_x")
    with torch.no_grad():
        got = pipe.transformer(**x, return_dict=False)[0]
    assert (expected - base).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert adapters.read_info(tmp_path)["adapter_type"] == kind
    pipe.unload_lora_weights()  # evaluate unloads each checkpoint before the next
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(**x, return_dict=False)[0], base)


@pytest.mark.parametrize("kind,r,alpha,lokr", CASES)
def test_peft_folder_loads_with_peft(tmp_path, kind, r, alpha, lokr):
    """The upstream-format PEFT folder: PEFT's own config class, upstream names; tensors back under our names."""
    from peft import PeftConfig

    model = trained(kind, r, alpha, lokr)
    state = adapters.adapter_state_dict(model)
    out = adapters.save_peft_adapter(state, tmp_path / "peft", base_model="x", **_info(kind, r, alpha, lokr))
    config = PeftConfig.from_pretrained(str(out))
    assert config.peft_type == ("LOKR" if kind == "lokr" else "LORA")
    assert getattr(config, "use_dora", False) is (kind == "dora")
    assert sorted(config.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    tensors = load_file(str(out / adapters.PEFT_WEIGHT_NAME))
    assert len(tensors) == len(state) and all(k.startswith("base_model.model.layers.") for k in tensors)
    assert json.loads((out / adapters.PEFT_CONFIG_NAME).read_text())["base_model_name_or_path"] == "x"


def comfy_patch(lora: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> tuple[dict, set[str]]:
    """The base state dict patched at strength 1.0 as ComfyUI does for ACEStep15 (module docstring), and the file
    keys no rule claimed."""
    out, loaded = dict(sd), set()
    for key in sd:
        if not key.endswith(".weight"):
            continue
        module = key[: -len(".weight")]
        up = module
        for u, d in TO_DIFFUSERS.items():
            up = up.replace(f".{d}", f".{u}")
        for x in (f"base_model.model.{up}", "lycoris_" + up.replace(".", "_")):
            w = sd[key].float()
            names = {n[len(x) + 1:] for n in lora if n.startswith(x + ".")}
            if not names:
                continue
            loaded |= {f"{x}.{n}" for n in names}
            t = {n: lora[f"{x}.{n}"] for n in names}
            if "lora_A.weight" in t:
                scale = t["alpha"].item() / t["lora_A.weight"].shape[0] if "alpha" in t else 1.0
                diff = scale * t["lora_B.weight"] @ t["lora_A.weight"]
                if "dora_scale" in t:
                    assert t["dora_scale"].shape[0] == w.shape[0]  # output axis
                    calc = w + diff
                    out[key] = calc * (t["dora_scale"] / (w.norm(dim=1, keepdim=True) + torch.finfo(w.dtype).eps))
                else:
                    out[key] = w + diff
            else:
                dim = None
                w1 = t.get("lokr_w1")
                if w1 is None:
                    dim, w1 = t["lokr_w1_b"].shape[0], t["lokr_w1_a"] @ t["lokr_w1_b"]
                w2 = t.get("lokr_w2")
                if w2 is None:
                    dim, w2 = t["lokr_w2_b"].shape[0], t["lokr_w2_a"] @ t["lokr_w2_b"]
                scale = t["alpha"].item() / dim if "alpha" in t and dim is not None else 1.0
                out[key] = w + scale * torch.kron(w1, w2).reshape(w.shape)
    return out, set(lora) - loaded


@pytest.mark.parametrize("kind,r,alpha,lokr", CASES)
def test_comfyui_file_at_strength_one_gives_the_trained_model(tmp_path, kind, r, alpha, lokr):
    model = trained(kind, r, alpha, lokr)
    x = dit_inputs()
    with torch.no_grad():
        expected = model(**x, return_dict=False)[0]
    base_weights = adapters.dora_base_weights(model) if kind == "dora" else None
    path = adapters.save_comfyui_folder(adapters.adapter_state_dict(model), tmp_path / "comfyui", variant="turbo",
                                        base_weights=base_weights, **_info(kind, r, alpha, lokr))
    lora = load_file(str(path))
    stems = {k.rsplit(".", 1)[0] if not k.endswith(".weight") else k.rsplit(".", 2)[0] for k in lora}
    assert all(s.startswith("lycoris_layers_" if kind == "lokr" else "base_model.model.layers.") for s in stems)
    base = tiny_transformer(0).eval()
    patched, unloaded = comfy_patch(lora, base.state_dict())
    assert unloaded == set()  # ComfyUI would log "lora key not loaded" for each
    base.load_state_dict(patched)
    with torch.no_grad():
        got = base(**x, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,r,alpha,lokr", CASES)
def test_merge_for_export_keeps_the_adapter_model(tmp_path, kind, r, alpha, lokr):
    """export's merge (diffusers fuse_lora + unload_lora) folds every type into the base weights."""
    from lofi_lora.export.merge import count_lora_layers, merge_lora

    model = trained(kind, r, alpha, lokr)
    adapters.save_diffusers_adapter(adapters.adapter_state_dict(model), tmp_path, **_info(kind, r, alpha, lokr))
    pipe = adapters.load_into_pipeline(adapter_pipeline(), tmp_path)
    x = dit_inputs()
    with torch.no_grad():
        before = pipe.transformer(**x, return_dict=False)[0]
        merged = merge_lora(pipe.transformer)
        after = merged(**x, return_dict=False)[0]
    assert count_lora_layers(merged) == 0
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_adapter_type_keys_are_checked_at_load():
    from lofi_lora.core.config import compose_config
    from lofi_lora.core.errors import ConfigError

    assert compose_config(["adapter=lokr"]).adapter.lokr.decompose_factor == -1
    assert compose_config(["adapter=dora"]).adapter.lokr is None
    with pytest.raises(ConfigError, match="adapter.type"):
        compose_config(["adapter.type=loha"])
    with pytest.raises(ConfigError, match="adapter.lokr.rank_dropout"):
        compose_config(["adapter=lokr", "adapter.lokr.rank_dropout=1.5"])
    with pytest.raises(ConfigError, match="adapter.lokr.rank"):
        compose_config(["adapter=lokr", "+adapter.lokr.rank=3"])
    with pytest.raises(ConfigError, match="adapter.lokr"):
        compose_config(["adapter.type=lokr"])
    with pytest.raises(ConfigError, match="rslora"):
        add_lora(tiny_transformer(0), real_section("lora", r=4, alpha=8, rslora=True, dropout=0.0,
                                                   target_modules=ATTN), _adapter("lokr", LOKR))


@pytest.mark.parametrize("kind,lokr", [("dora", None), ("lokr", LOKR), ("lokr", {**LOKR, "decompose_both": True})])
def test_every_key_maps_onto_the_15_model_with_matching_shapes(tmp_path, kind, lokr):
    """The ComfyUI file of an adapter on every attention and MLP projection of the real 2B DiT (24 layers; shapes
    from tests/data/comfyui_ace_step15_decoder_keys.txt): every key is claimed by ComfyUI's ACEStep15 names and each
    layer's patch has its weight's shape. PEFT builds the adapter of each distinct shape (one Linear per shape)."""
    from test_comfyui_adapter import MLP, comfy_model_keys

    model_keys, prefix, r = comfy_model_keys(), "diffusion_model.decoder.", 8
    wanted = {}
    for k, shape in model_keys.items():
        module = k[len(prefix):-len(".weight")]
        name = module.rsplit(".", 1)[-1]
        if ".layers." in k and k.endswith(".weight") and (name in TO_DIFFUSERS or name in MLP):
            wanted[module.rsplit(".", 1)[0] + "." + TO_DIFFUSERS.get(name, name)] = shape
    assert len(wanted) == 24 * 11
    per_shape = {}
    for shape in sorted(set(wanted.values())):  # PEFT's own tensors for a Linear of this shape
        holder = torch.nn.Module()
        holder.proj = torch.nn.Linear(shape[1], shape[0], bias=False)
        from peft import inject_adapter_in_model

        inject_adapter_in_model(adapters.peft_config(r, 16, False, 0.0, ["proj"], kind, lokr), holder)
        sd = {k.removeprefix("proj."): v for k, v in adapters.adapter_state_dict(holder).items()}
        per_shape[shape] = (sd, holder.proj.get_base_layer().weight.detach())
    state, base = {}, {}
    for module, shape in wanted.items():
        sd, w = per_shape[shape]
        state.update({f"{module}.{k}": v for k, v in sd.items()})
        base[module] = w
    path = adapters.save_comfyui_adapter(state, tmp_path / "x.safetensors", r=r, alpha=16, rslora=False,
                                         adapter_type=kind, base_weights=base)
    lora = load_file(str(path))
    claimed = {}
    for k in model_keys:
        if k.startswith(prefix) and k.endswith(".weight"):
            m = k[len(prefix):-len(".weight")]
            for x in (f"base_model.model.{m}", "lycoris_" + m.replace(".", "_")):
                claimed.update({n: k for n in lora if n.startswith(x + ".")})
    assert set(lora) == set(claimed)  # nothing ComfyUI would report as "lora key not loaded"
    for n, target in claimed.items():
        shape = model_keys[target]
        if n.endswith(".dora_scale"):
            assert tuple(lora[n].shape) == (shape[0], 1), n
        elif n.endswith(".lokr_w1") or n.endswith(".lokr_w1_a"):
            stem = n.rsplit(".", 1)[0]
            w1 = lora[f"{stem}.lokr_w1"] if f"{stem}.lokr_w1" in lora else lora[f"{stem}.lokr_w1_a"] @ lora[f"{stem}.lokr_w1_b"]
            w2 = lora[f"{stem}.lokr_w2"] if f"{stem}.lokr_w2" in lora else lora[f"{stem}.lokr_w2_a"] @ lora[f"{stem}.lokr_w2_b"]
            assert torch.kron(w1, w2).numel() == shape[0] * shape[1], n
            assert (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]) == shape, n
