"""The fast train step computes what the plain step computes: selective checkpointing, regional compile, band
attention for the sliding-window layers and the sync-free loss give the same loss and LoRA gradients (CPU, toy size).
GPU equivalence at full size is checked inside benchmarks/train_step.py."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from helpers.config import real_section
from helpers.workspace import tiny_transformer, widths
from lofi_lora.train import speed as train_speed
from lofi_lora.core.errors import ConfigError
from lofi_lora.train.objective import Objective, flow_matching_loss, sample_timesteps
from lofi_lora.train.state import add_lora, lora_params

LOSS = Objective("uniform", -0.4, 1.0)


def _model():
    m = tiny_transformer(0)
    torch.manual_seed(1)
    add_lora(m, real_section("lora"))
    with torch.no_grad():  # lora_B starts at zero: move it so the LoRA path carries signal
        for p in lora_params(m).values():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    return m.train()


def _batch(m, frames=40, bsz=2):
    """A seeded batch at the widths model `m` takes."""
    w, g = widths(m), torch.Generator().manual_seed(3)
    return {"target_latents": torch.randn(bsz, frames, w.latent, generator=g),
            "attention_mask": torch.ones(bsz, frames),
            "encoder_hidden_states": torch.randn(bsz, 6, w.cond, generator=g),
            "encoder_attention_mask": torch.ones(bsz, 6),
            "context_latents": torch.randn(bsz, frames, w.context, generator=g)}


def _frames_past_window(m, extra_tokens=14):
    """Frames whose tokens (frames / patch) outnumber the sliding window, so the window cuts pairs."""
    return m.config.patch_size * (m.config.sliding_window + extra_tokens)


def _loss_and_grads(m, batch):
    for p in m.parameters():
        p.grad = None
    loss, frames = LOSS(m, batch, torch.Generator().manual_seed(7))
    loss.backward()
    return loss.detach(), frames, {k: p.grad.clone() for k, p in lora_params(m).items()}


def test_checkpoint_share_parsing():
    assert train_speed.checkpoint_share(False) == 0.0
    assert train_speed.checkpoint_share(None) == 0.0
    assert train_speed.checkpoint_share(True) == 1.0
    assert train_speed.checkpoint_share(0.5) == 0.5
    for bad in (1.5, -0.1, "some"):
        with pytest.raises(ConfigError, match="grad_checkpointing"):
            train_speed.checkpoint_share(bad)


def test_training_loss_is_the_pure_loss_at_its_draws_and_stays_on_the_device():
    """The objective draws timesteps then noise from the step's generator and calls the pure loss (which
    validation calls too); loss and frame count come back as tensors (no host sync)."""
    m = _model()
    batch = _batch(m)
    loss, frames = LOSS(m, batch, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = sample_timesteps("uniform", 2, g, torch.device("cpu"))
    noise = torch.randn(batch["target_latents"].shape, generator=g)
    pure, pure_frames = flow_matching_loss(m, batch, t, noise)
    assert torch.is_tensor(frames) and int(frames) == int(pure_frames) == 2 * 40
    assert torch.equal(loss, pure)


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_selective_checkpointing_keeps_loss_and_grads(share):
    plain, fast = _model(), _model()
    batch = _batch(plain)
    n = train_speed.enable_selective_checkpointing(fast, share)
    assert n == round(share * len(fast.layers))
    lp, fp, gp = _loss_and_grads(plain, batch)
    lf, ff, gf = _loss_and_grads(fast, batch)
    assert torch.equal(lp, lf) and int(fp) == int(ff)
    for k in gp:
        torch.testing.assert_close(gf[k], gp[k], rtol=1e-5, atol=1e-7)


def test_compiled_blocks_with_checkpointing_match_eager():
    """Regional compile (aot_eager on CPU: dynamo + AOT autograd, no C++ build) + selective checkpointing."""
    torch._dynamo.reset()
    plain = _model()
    batch = _batch(plain)
    fast = copy.deepcopy(plain)
    train_speed.enable_selective_checkpointing(fast, 0.5)
    assert train_speed.compile_blocks(fast, backend="aot_eager") == len(fast.layers)
    lp, _, gp = _loss_and_grads(plain, batch)
    lf, _, gf = _loss_and_grads(fast, batch)
    torch.testing.assert_close(lf, lp, rtol=1e-5, atol=1e-6)
    for k in gp:
        torch.testing.assert_close(gf[k], gp[k], rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize("budget,share", [(None, 0.0), (0.3, 0.0), (None, 0.5)])
def test_whole_model_compile_matches_eager(budget, share):
    """`train.compile=model`: the whole forward is one graph (no graph break), and with the min-cut partitioner
    (the one inductor uses; aot_eager_decomp_partition on CPU), an activation memory budget (recompute instead of
    save) or checkpointed blocks inside the graph, loss and gradients stay those of eager, also after the batch
    shape changes (a second static-shape compile)."""
    import torch._functorch.config as functorch_config

    torch._dynamo.reset()
    plain = _model()
    fast = copy.deepcopy(plain)
    train_speed.use_fast_attention(fast)  # as stage train does before compiling
    train_speed.enable_selective_checkpointing(fast, share)
    batch = _batch(plain)
    explained = torch._dynamo.explain(fast.forward)(
        hidden_states=batch["target_latents"], timestep=torch.full((2,), 0.4), timestep_r=torch.full((2,), 0.4),
        encoder_hidden_states=batch["encoder_hidden_states"], context_latents=batch["context_latents"])
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    try:
        train_speed.compile_model(fast, "model", backend="aot_eager_decomp_partition", memory_budget=budget)
        assert functorch_config.activation_memory_budget == (1.0 if budget is None else budget)
        for b in (batch, _batch(plain, frames=48, bsz=3)):
            lp, _, gp = _loss_and_grads(plain, b)
            lf, _, gf = _loss_and_grads(fast, b)
            torch.testing.assert_close(lf, lp, rtol=1e-5, atol=1e-6)
            for k in gp:
                torch.testing.assert_close(gf[k], gp[k], rtol=1e-4, atol=1e-6)
    finally:
        functorch_config.activation_memory_budget = 1.0
        torch._dynamo.reset()


def test_compile_scope_and_budget_are_checked():
    assert train_speed.compile_scope(False) is None and train_speed.compile_scope(True) == "block"
    assert train_speed.compile_scope("model") == "model"
    with pytest.raises(ConfigError, match="train.compile"):
        train_speed.compile_scope("graph")
    with pytest.raises(ConfigError, match="activation_memory_budget"):
        train_speed.compile_model(_model(), "model", backend="aot_eager", memory_budget=1.5)


def test_band_attention_equals_dense_sliding_mask():
    """flex_attention with the band block mask = the model's dense |i-j| <= window mask (forward; CPU flex has no
    backward, the GPU benchmark checks gradients). More tokens than the window, so the band cuts pairs."""
    dense = _model()
    batch = _batch(dense, frames=_frames_past_window(dense))
    band = copy.deepcopy(dense)
    n_sliding = sum(1 for b in band.layers if b.self_attn.sliding_window)
    assert train_speed.use_fast_attention(copy.deepcopy(dense))["band"] == 0  # CPU: no band unless forced
    assert train_speed.use_fast_attention(band, force_band=True) == {"band": n_sliding,
                                                                     "sdpa": 2 * len(band.layers) - n_sliding}
    t = torch.full((2,), 0.4)
    kw = dict(hidden_states=batch["target_latents"], timestep=t, timestep_r=t,
              encoder_hidden_states=batch["encoder_hidden_states"], context_latents=batch["context_latents"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # flex_attention without compile: unfused, fine at toy size
        a, b = dense(**kw).sample, band(**kw).sample
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_direct_sdpa_processor_keeps_loss_and_grads():
    """Every attention through SdpaAttnProcessor (no diffusers backend dispatch; CPU keeps the dense sliding mask)
    gives the diffusers processor's loss and LoRA gradients, training mode, more tokens than the window (it cuts
    pairs)."""
    plain = _model()
    batch = _batch(plain, frames=_frames_past_window(plain))
    fast = copy.deepcopy(plain)
    assert train_speed.use_fast_attention(fast) == {"band": 0, "sdpa": 2 * len(fast.layers)}
    lp, _, gp = _loss_and_grads(plain, batch)
    lf, _, gf = _loss_and_grads(fast, batch)
    torch.testing.assert_close(lf, lp, rtol=1e-6, atol=1e-7)
    for k in gp:
        torch.testing.assert_close(gf[k], gp[k], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_two_rank_ddp_resume_is_exact(tmp_path):
    """torchrun, 2 CPU ranks (gloo): a run resumed from its step-3 checkpoint ends bitwise equal to the full run."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from lofi_lora.train.adapters import DIFFUSERS_WEIGHT_NAME
    from helpers.workspace import child_env, child_files, child_result, workspace

    cfg = workspace(tmp_path, max_steps=6, checkpoint_every=3, keep_last=3)
    script, cfg_file = child_files(cfg, tmp_path)
    env = child_env()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script), str(cfg_file)]
    final = Path(cfg.paths.lora) / "final" / DIFFUSERS_WEIGHT_NAME
    subprocess.run(torchrun, check=True, env=env, capture_output=True, timeout=300)
    full = load_file(str(final))
    done = subprocess.run(torchrun + ["3"], check=True, env=env, capture_output=True, text=True, timeout=300)
    resumed = load_file(str(final))
    assert set(full) == set(resumed) and full
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    result = child_result(done.stdout)
    assert result["resumed_from"] == 3 and result["steps_run"] == 3 and result["steps"] == 6
