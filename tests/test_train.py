"""Training objective, schedule, batching and one end-to-end run on the toy model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.config import real_config
from helpers.workspace import tiny_transformer, tiny_widths, workspace
from lofi_lora.train import objective
from lofi_lora.train import stage as train
from lofi_lora.train import state as train_state
from lofi_lora.train.objective import Objective

# ace-step/ACE-Step-1.5 acestep/training/trainer.py (f30aee4): the turbo model's 8 shift-3 inference timesteps
UPSTREAM_TURBO = [1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3]


def test_turbo_timesteps_match_upstream():
    assert list(objective.TURBO_SHIFT3_TIMESTEPS) == pytest.approx(UPSTREAM_TURBO, abs=1e-15)
    g = torch.Generator().manual_seed(0)
    t = objective.sample_timesteps("discrete_turbo", 4000, g, torch.device("cpu"))
    assert sorted(set(t.tolist())) == pytest.approx(sorted(UPSTREAM_TURBO))


def test_logit_normal_timesteps():
    g = torch.Generator().manual_seed(0)
    t = objective.sample_timesteps("logit_normal", 20000, g, torch.device("cpu"), -0.4, 1.0)
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(-0.4, abs=0.03)
    assert logit.std().item() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("variant,scheme,ratio", [("turbo", "discrete_turbo", 0.0), ("base", "logit_normal", 0.15),
                                                  ("sft", "logit_normal", 0.15)])
def test_auto_settings_follow_the_variant(variant, scheme, ratio):
    assert objective.timestep_scheme("auto", variant) == scheme
    assert objective.cfg_dropout_ratio("auto", variant) == ratio
    assert objective.timestep_scheme("uniform", variant) == "uniform"
    assert objective.cfg_dropout_ratio(0.3, variant) == 0.3


def _batch(lengths=(10, 7), enc=(4, 6)):
    """Seeded cache items at the tiny DiT's widths."""
    w, g = tiny_widths(), torch.Generator().manual_seed(1)
    items = [{"target_latents": torch.randn(n, w.latent, generator=g), "attention_mask": torch.ones(n),
              "encoder_hidden_states": torch.randn(l, w.cond, generator=g), "encoder_attention_mask": torch.ones(l),
              "context_latents": torch.randn(n, w.context, generator=g)} for n, l in zip(lengths, enc)]
    return items


def test_collate_pads_and_masks():
    batch, w = train_state.collate(_batch()), tiny_widths()
    assert batch["target_latents"].shape == (2, 10, w.latent) and batch["encoder_hidden_states"].shape == (2, 6, w.cond)
    assert batch["attention_mask"].tolist()[1] == [1.0] * 7 + [0.0] * 3
    assert batch["encoder_attention_mask"].tolist()[0] == [1.0] * 4 + [0.0] * 2
    assert torch.all(batch["target_latents"][1, 7:] == 0)


def test_collate_rounds_lengths_up_to_pad_multiple():
    """train.pad_multiple: lengths 10 and 6 -> 12 and 8 with multiple 4; the extra frames are masked padding."""
    batch = train_state.collate(_batch(), multiple=4)
    assert batch["target_latents"].shape[1] == 12 and batch["encoder_hidden_states"].shape[1] == 8
    assert batch["attention_mask"].tolist()[0] == [1.0] * 10 + [0.0] * 2
    assert torch.all(batch["target_latents"][:, 10:] == 0) and torch.all(batch["context_latents"][:, 10:] == 0)
    assert train_state.collate(_batch(), multiple=1)["target_latents"].shape[1] == 10


def test_loss_ignores_padded_frames():
    """The masked loss of a padded clip equals the loss of the clip alone when nothing else is padded."""
    model = tiny_transformer(0)
    items = _batch((8, 8), (5, 5))
    items[1]["attention_mask"][6:] = 0  # last two frames are padding in the cache itself
    full = train_state.collate(items)
    with torch.no_grad():
        loss, frames = Objective("discrete_turbo", -0.4, 1.0)(model, full, torch.Generator().manual_seed(5))
    assert frames == 8 + 6
    # recompute by hand: same draws, squared error over valid frames only
    g = torch.Generator().manual_seed(5)
    t = objective.sample_timesteps("discrete_turbo", 2, g, torch.device("cpu"))
    x0 = full["target_latents"]
    x1 = torch.randn(x0.shape, generator=g)
    xt = t.view(-1, 1, 1) * x1 + (1 - t.view(-1, 1, 1)) * x0
    with torch.no_grad():
        pred = model(hidden_states=xt, timestep=t, timestep_r=t, encoder_hidden_states=full["encoder_hidden_states"],
                     context_latents=full["context_latents"], return_dict=False)[0]
    err = (pred - (x1 - x0)).pow(2)
    manual = (err[0].sum() + err[1, :6].sum()) / ((8 + 6) * tiny_widths().latent)
    torch.testing.assert_close(loss, manual)


def test_cfg_dropout_uses_the_null_condition():
    model = tiny_transformer(0)
    batch = train_state.collate(_batch((8, 8), (5, 5)))
    null = torch.randn(1, 1, tiny_widths().cond, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        dropped, _ = Objective("logit_normal", -0.4, 1.0, 0.999999, null)(model, batch, torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        torch.rand(2, generator=g)  # the dropout draw
        nulled = dict(batch, encoder_hidden_states=null.expand_as(batch["encoder_hidden_states"]))
        by_hand, _ = Objective("logit_normal", -0.4, 1.0)(model, nulled, g)
        kept, _ = Objective("logit_normal", -0.4, 1.0, 1e-9, null)(model, batch, torch.Generator().manual_seed(5))
    torch.testing.assert_close(dropped, by_hand)
    assert not torch.isclose(dropped, kept)


def test_schedule_warmup_then_cosine_to_floor(tmp_path):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    cfg = real_config(tmp_path, train={"warmup_steps": 4, "max_steps": 20, "schedule": "cosine", "min_lr_ratio": 0.1})
    sched = train_state.build_scheduler(opt, cfg.train)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_batch_order_is_a_function_of_seed_and_position():
    lengths = [10, 12, 14, 16, 18, 11, 13]
    a = train_state.BatchOrder(lengths, 2, seed=3, bucket_by_length=True)
    seq = [a.next() for _ in range(9)]
    assert sorted(i for b in seq[:4] for i in b) == list(range(7))  # one epoch covers every clip once
    b = train_state.BatchOrder(lengths, 2, seed=3, bucket_by_length=True)
    for _ in range(5):
        b.next()
    c = train_state.BatchOrder(lengths, 2, seed=3, bucket_by_length=True)
    c.load_state_dict(b.state_dict())
    assert [c.next() for _ in range(4)] == seq[5:]


def test_train_config_hash_ignores_resume_safe_keys(tmp_path):
    base = real_config(tmp_path)
    h = train.train_config_hash(base, "data")
    for key, value in [("max_steps", 99), ("checkpoint_every", 7), ("keep_last", 9), ("resume_from", 5),
                       ("log_every", 3), ("compile", "model"), ("compile_mode", "reduce-overhead"),
                       ("activation_memory_budget", 0.5)]:
        assert train.train_config_hash(real_config(tmp_path, train={key: value}), "data") == h, key
    assert train.train_config_hash(real_config(tmp_path, lora={"r": 8}), "data") != h
    assert train.train_config_hash(real_config(tmp_path, train={"lr": 1e-3}), "data") != h
    assert train.train_config_hash(base, "other data") != h


def test_end_to_end_run_writes_everything(tmp_path):
    cfg = workspace(tmp_path, max_steps=6, checkpoint_every=3, lr=1e-2)
    result = train.run_train(cfg)
    # per attention block, r=4, hidden 32, kv width 16: q 4*(32+32) + k,v 4*(32+16) each + out 4*(32+32) = 896;
    # self + cross attention in 2 layers
    assert result["steps"] == 6 and result["trainable_params"] == 896 * 2 * 2
    lora = Path(cfg.paths.lora)
    assert (lora / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert {p.name for p in (lora / "peft").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    metrics = json.loads((Path(cfg.paths.metrics) / "train.json").read_text())["train"]
    for key in ("loss", "loss_smoothed", "steps", "trainable_params", "grad_norm", "lr"):
        assert metrics[key] is not None, key
    assert "steps_per_s" not in metrics and "wall_s" not in metrics  # timings are logged, not versioned
    loop = result["loop"]  # where the loop's time went (issue 28): first interval, steady step, checkpoint writes
    assert loop["first_interval_s"] > 0 and loop["steady_ms_per_step"] > 0 and loop["checkpoint_s"] > 0
    assert loop["first_interval_s"] + loop["checkpoint_s"] < result["wall_s"] and "loop" not in metrics
    curves = Path(cfg.paths.metrics) / "train" / "plots" / "metrics"
    for name in ("loss", "lr", "grad_norm"):
        rows = (curves / f"{name}.tsv").read_text().splitlines()
        assert rows[0].split("\t") == ["step", name] and len(rows) == 7
    assert not (Path(cfg.paths.metrics) / "train" / "dvc.yaml").exists()  # dvcyaml=False: dvc.yaml is ours


def test_loss_goes_down_on_a_fixed_batch(tmp_path):
    """Overfitting check: the LoRA learns the structured toy latents (same clips every step, fixed timesteps)."""
    cfg = workspace(tmp_path, n_clips=3, max_steps=60, checkpoint_every=1000, lr=2e-2, warmup_steps=0,
                    schedule="constant", batch_size=2, timesteps="uniform")
    train.run_train(cfg)
    rows = (Path(cfg.paths.metrics) / "train" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    losses = [float(r.split("\t")[1]) for r in rows]
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.95 * first, (first, last)


def test_gradient_checkpointing_gives_the_same_lora_gradients(tmp_path):
    lora_cfg = real_config(tmp_path).lora
    grads = []
    for checkpointing in (False, True):
        model = tiny_transformer(0)
        torch.manual_seed(0)
        train_state.add_lora(model, lora_cfg)
        with torch.no_grad():
            for name, p in train_state.lora_params(model).items():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        loss, _ = Objective("uniform", 0.0, 1.0)(model, train_state.collate(_batch((8, 8), (5, 5))),
                                                 torch.Generator().manual_seed(1))
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in train_state.lora_params(model).items()})
    assert all(g.abs().max() > 0 for g in grads[1].values())
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7)


def test_metrics_buffer_reads_late_the_same_values_and_refuses_a_non_finite_loss():
    """Reading step values every 4 steps (as on CUDA) gives the smoothed loss and last values of reading every step."""
    from lofi_lora.core.errors import ModelError
    from lofi_lora.train.log import MetricsBuffer

    losses = [1.0, 0.8, 0.9, 0.7, 0.6, 0.65, 0.5]
    every, late = MetricsBuffer(None, 1, 7), MetricsBuffer(None, 4, 7)
    for step, loss in enumerate(losses, 1):
        for buf in (every, late):
            buf.add(step, torch.tensor(loss), torch.tensor(0.1 * step), 1e-3)
        every.flush()
        if step % 4 == 0:
            late.flush()
    late.flush()
    assert late.ema_loss == every.ema_loss and late.last == every.last and not late.pending
    bad = MetricsBuffer(None, 1, 3)
    bad.add(3, torch.tensor(float("nan")), torch.tensor(1.0), 1e-3)
    with pytest.raises(ModelError, match="train loss is nan at step 3"):
        bad.flush()
