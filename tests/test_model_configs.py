"""The six real ACE-Step 1.5 model configs and the XL experiment preset: upstream's per-variant settings."""
from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from lofi_lora.train.objective import timestep_scheme
from lofi_lora.model.variants import sampling_settings
from lofi_lora.core.params import compose_params_yaml

# Upstream ACE-Step 1.5 defaults: turbo is guidance-distilled (8 steps, shift 3, no CFG); base and sft sample
# 50 steps at shift 1 with CFG 7 (acestep/inference.py, docs' model table, training_v2 --shift help).
UPSTREAM = {"turbo": (8, 3.0, 1.0, "discrete_turbo"), "base": (50, 1.0, 7.0, "logit_normal"),
            "sft": (50, 1.0, 7.0, "logit_normal")}
MODELS = [(f"ace_step_v15{xl}{'' if (v == 'turbo' and not xl) else '_' + v}", v, bool(xl))
          for xl in ("", "_xl") for v in ("turbo", "base", "sft")]


@pytest.mark.parametrize("name,variant,xl", MODELS)
def test_model_config_carries_upstreams_variant_settings(name, variant, xl):
    params = yaml.safe_load(compose_params_yaml([f"model={name}"]))
    m = params["model"]
    steps, shift, cfg, scheme = UPSTREAM[variant]
    assert m["name"] == name and m["variant"] == variant and m["source"] == "native"
    assert m["native_dir"] == f"acestep-v15-{'xl-' if xl else ''}{variant}"
    assert m["sampling"] == {"num_inference_steps": steps, "shift": shift, "guidance_scale": cfg}
    assert m["train_timesteps"] == scheme
    # what the stages make of it: train.timesteps=auto -> the model's scheme; evaluate samples with its settings
    model = OmegaConf.create(m)
    assert timestep_scheme("auto", variant, model.get("train_timesteps")) == scheme
    assert sampling_settings(variant) | dict(model.get("sampling")) == m["sampling"]


def test_xl_experiment_preset_switches_to_xl_turbo_on_the_gpu_profile():
    params = yaml.safe_load(compose_params_yaml(["experiment=lofi_v15_xl"]))
    assert params["model"]["name"] == "ace_step_v15_xl_turbo"
    assert params["model"]["native_dir"] == "acestep-v15-xl-turbo"
    two_b = yaml.safe_load(compose_params_yaml(["experiment=lofi_v15"]))
    for group in ("train", "lora", "eval", "data"):
        assert params[group] == two_b[group]


def test_the_toy_default_runs_evaluate_and_export_on_one_thread_and_the_gpu_profiles_on_every_core():
    """conf/export/tiny.yaml is conf/export/default.yaml plus one thread for torch and onnxruntime."""
    tiny = yaml.safe_load(compose_params_yaml([]))
    assert tiny["eval"]["cpu_threads"] == tiny["export"]["cpu_threads"] == tiny["export"]["ort_threads"] == 1
    for exp in ("lofi_v15", "lofi_v15_xl"):
        full = yaml.safe_load(compose_params_yaml([f"experiment={exp}"]))
        assert full["eval"]["cpu_threads"] is full["export"]["cpu_threads"] is full["export"]["ort_threads"] is None
        recipe = {k: v for k, v in tiny["export"].items() if k not in ("cpu_threads", "ort_threads")}
        assert recipe == {k: v for k, v in full["export"].items() if k not in ("cpu_threads", "ort_threads")}
