"""A frozen base in int8 under a full-precision adapter (train.base_weights, issue 28): it trains through the stage,
resumes exactly, saves an adapter like any other, and refuses what it cannot run before the model loads."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.config import changed
from helpers.workspace import workspace
from lofi_lora.core.errors import ConfigError
from lofi_lora.train import base_weights
from lofi_lora.train.adapters import DIFFUSERS_WEIGHT_NAME
from lofi_lora.train.stage import run_train, train_config_hash


def _adapter(cfg) -> dict[str, torch.Tensor]:
    return load_file(str(Path(cfg.paths.lora) / "final" / DIFFUSERS_WEIGHT_NAME))


def test_an_int8_base_trains_close_to_the_native_one_and_resumes_bitwise(tmp_path):
    native = workspace(tmp_path / "native", max_steps=8, checkpoint_every=4, keep_last=3)
    int8 = changed(workspace(tmp_path / "int8", max_steps=8, checkpoint_every=4, keep_last=3),
                   train={"base_weights": "int8"})
    a, b = run_train(native), run_train(int8)
    wa, wb = _adapter(native), _adapter(int8)
    assert wa.keys() == wb.keys()
    rel = [float((wa[k] - wb[k]).norm() / wa[k].norm()) for k in wa if wa[k].norm() > 0]
    assert 0 < max(rel) < 0.1, rel  # int8 weights move the gradients a little, not the direction of learning
    assert abs(a["final_loss"] - b["final_loss"]) < 0.05 * abs(a["final_loss"]), (a["final_loss"], b["final_loss"])

    straight = _adapter(int8)
    assert run_train(changed(int8, train={"resume_from": 4}))["resumed_from"] == 4
    again = _adapter(int8)
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_only_the_block_linears_are_quantized(tmp_path):
    from lofi_lora.model.load import load_transformer

    cfg = workspace(tmp_path, max_steps=1)
    model = load_transformer(cfg.model, cfg.paths.base_model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    n = base_weights.quantize_blocks(model, "int8")
    assert n == len([x for x in linears if x.startswith("layers.")]) and n < len(linears)
    kinds = {name: type(m.weight).__name__ for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert all((kinds[x] != "Parameter") == x.startswith("layers.") for x in linears), kinds


def test_what_cannot_run_stops_before_the_model_loads_and_native_keeps_the_hash(tmp_path):
    with pytest.raises(ConfigError, match="DoRA"):
        base_weights.check("int8", "dora", torch.device("cpu"))
    with pytest.raises(ConfigError, match="fp8 needs a CUDA GPU"):
        base_weights.check("fp8", "lora", torch.device("cpu"))
    base_weights.check("int8", "lokr", torch.device("cpu"))
    cfg = workspace(tmp_path, max_steps=2)
    assert cfg.train.base_weights == "native"
    h = train_config_hash(cfg, "data")
    assert h != train_config_hash(changed(cfg, train={"base_weights": "int8"}), "data")
