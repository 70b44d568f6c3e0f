"""Each adapter type trains through the stage and resumes exactly, its EMA included (issue 27)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.config import changed
from helpers.workspace import workspace
from lofi_lora.train.adapters import DIFFUSERS_WEIGHT_NAME, EMA_WEIGHT_NAME, read_info
from lofi_lora.train.checkpoints import CheckpointStore
from lofi_lora.train.stage import run_train

LOKR = {"decompose_both": False, "decompose_factor": -1, "rank_dropout": 0.0, "module_dropout": 0.0}
ADAPTERS = {"dora": {"type": "dora", "lokr": None}, "lokr": {"type": "lokr", "lokr": LOKR}}


def _files(cfg) -> dict[str, dict[str, torch.Tensor]]:
    lora = Path(cfg.paths.lora)
    return {n: load_file(str(lora / "final" / n)) for n in (DIFFUSERS_WEIGHT_NAME, EMA_WEIGHT_NAME)}


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_type_with_ema_resumes_bitwise(tmp_path, kind):
    """12 steps straight vs a resume from the step-5 checkpoint to 12: the same adapter and EMA, bit for bit."""
    cfg = changed(workspace(tmp_path, max_steps=12, checkpoint_every=5, keep_last=3, ema_decay=0.9),
                  adapter=ADAPTERS[kind])
    run_train(cfg)
    straight = _files(cfg)
    assert read_info(Path(cfg.paths.lora) / "final")["adapter_type"] == kind
    assert read_info(Path(cfg.paths.lora) / "final", EMA_WEIGHT_NAME)["ema"] is True
    (entry,) = [e for e in CheckpointStore(Path(cfg.paths.lora) / "checkpoints").entries() if e["step"] == 10]
    assert EMA_WEIGHT_NAME in entry["files"]

    resumed = run_train(changed(cfg, train={"resume_from": 5}))
    assert resumed["resumed_from"] == 5
    again = _files(cfg)
    for d in straight:
        assert straight[d].keys() == again[d].keys()
        for k in straight[d]:
            assert torch.equal(straight[d][k], again[d][k]), (d, k)
    # the EMA lags the raw weights: a different adapter
    raw, ema = straight[DIFFUSERS_WEIGHT_NAME], straight[EMA_WEIGHT_NAME]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_ema_off_keeps_the_lora_hash_and_files(tmp_path):
    """EMA keys at 0 and adapter=lora leave the config hash as it was before they existed."""
    from lofi_lora.train.stage import train_config_hash

    cfg = workspace(tmp_path, max_steps=2)
    h = train_config_hash(cfg, "data")
    assert h == train_config_hash(changed(cfg, train={"ema_device": "cpu"}), "data")  # not read when off
    assert h != train_config_hash(changed(cfg, train={"ema_decay": 0.99}), "data")
    assert h != train_config_hash(changed(cfg, adapter=ADAPTERS["dora"]), "data")


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_type_compiles_whole_model_without_graph_breaks_and_matches_eager(kind):
    """The fast path's `train.compile=model` for DoRA and LoKr: one graph (no break), loss and adapter gradients
    those of eager (aot_eager_decomp_partition on CPU, the partitioner inductor uses)."""
    import copy

    from helpers.config import real_section
    from helpers.workspace import tiny_transformer, tiny_widths
    from lofi_lora.train import speed as train_speed
    from lofi_lora.train.objective import Objective
    from lofi_lora.train.state import add_lora, lora_params

    torch._dynamo.reset()
    plain = tiny_transformer(0)
    torch.manual_seed(1)
    add_lora(plain, real_section("lora"), real_section("adapter", **ADAPTERS[kind]))
    with torch.no_grad():  # move every adapter tensor off its init so each path carries signal
        for p in lora_params(plain).values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    plain.train()
    from lofi_lora.train.adapters import skip_idle_lokr_dropout

    assert skip_idle_lokr_dropout(plain) == (0 if kind == "dora" else len(plain.layers) * 2 * 4)  # as build_state does
    fast = copy.deepcopy(plain)
    train_speed.use_fast_attention(fast)
    g, w = torch.Generator().manual_seed(3), tiny_widths()
    batch = {"target_latents": torch.randn(2, 40, w.latent, generator=g), "attention_mask": torch.ones(2, 40),
             "encoder_hidden_states": torch.randn(2, 6, w.cond, generator=g), "encoder_attention_mask": torch.ones(2, 6),
             "context_latents": torch.randn(2, 40, w.context, generator=g)}
    explained = torch._dynamo.explain(fast.forward)(
        hidden_states=batch["target_latents"], timestep=torch.full((2,), 0.4), timestep_r=torch.full((2,), 0.4),
        encoder_hidden_states=batch["encoder_hidden_states"], context_latents=batch["context_latents"])
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    loss_fn = Objective("uniform", -0.4, 1.0)

    def loss_and_grads(m):
        for p in m.parameters():
            p.grad = None
        loss, _ = loss_fn(m, batch, torch.Generator().manual_seed(7))
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in lora_params(m).items()}

    try:
        train_speed.compile_model(fast, "model", backend="aot_eager_decomp_partition")
        lp, gp = loss_and_grads(plain)
        lf, gf = loss_and_grads(fast)
        torch.testing.assert_close(lf, lp, rtol=1e-5, atol=1e-6)
        assert gp.keys() == gf.keys() and len(gp) > 0
        for k in gp:
            torch.testing.assert_close(gf[k], gp[k], rtol=1e-4, atol=1e-6)
    finally:
        torch._dynamo.reset()
