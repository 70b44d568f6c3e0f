"""Parity of the native -> diffusers conversion against upstream's own ACE-Step 1.5 model code (CPU, float32).

    python benchmarks/native_parity.py --upstream PATH [--deps DIR]            # table: 2B and XL parity
    python benchmarks/native_parity.py --upstream PATH [--deps DIR] layout     # rewrite src/lofi_lora/model/native/layout/*.json

PATH is a checkout of github.com/ace-step/ACE-Step-1.5 (its `acestep/models/{turbo,xl_turbo}/` modelling files);
DIR an optional `pip install --target` folder with what those files import (einops, vector-quantize-pytorch and its
own imports). Nothing of upstream is copied into this project: it is imported from PATH at run time.

parity: for each layout a tiny native checkpoint is built by `lofi_lora.model.native.convert.build`, loaded into
upstream's `AceStepConditionGenerationModel` (strict: the builder's key names and shapes are upstream's), converted by
`lofi_lora.model.native.convert.convert` and loaded by `AceStepPipeline.from_pretrained`. The same inputs (padded
text/lyrics, a silence-latent timbre, odd-length latents, t != r) go through both; the table gives the max abs and
max relative difference of the condition-encoder and decoder outputs. The XL row also shows diffusers' stock
`AceStepConditionEncoder`, which omits XL's timbre CLS token.

layout: derives each layout's key names and shape rules from upstream's module tree (two probe configs with distinct
sizes; each dimension is matched to the one config expression that gives it in both).
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lofi_lora.model.native import convert as nc  # noqa: E402

MODEL_FILES = {"2b": "acestep.models.turbo.modeling_acestep_v15_turbo",
               "xl": "acestep.models.xl_turbo.modeling_acestep_v15_xl_turbo"}
CONFIG_MODULE = "acestep.models.common.configuration_acestep_v15"


def upstream(layout: str):
    """(AceStepConfig, AceStepConditionGenerationModel) from the upstream checkout on sys.path."""
    cfg_mod = importlib.import_module(CONFIG_MODULE)
    return cfg_mod.AceStepConfig, importlib.import_module(MODEL_FILES[layout]).AceStepConditionGenerationModel


def upstream_model(layout: str, native_cfg: dict, attn: str = "sdpa"):
    AceStepConfig, Model = upstream(layout)
    cfg = AceStepConfig(**{k: v for k, v in native_cfg.items() if not k.startswith("encoder_")
                           and k not in ("architectures", "model_type", "is_turbo", "auto_map")})
    for k, v in native_cfg.items():
        if k.startswith("encoder_") or k == "is_turbo":
            setattr(cfg, k, v)
    cfg._attn_implementation = attn
    return Model(cfg).eval()


# ---------------------------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------------------------

PROBES = {  # two configs whose sizes differ everywhere, so each dimension has one explaining expression
    "2b": [dict(hidden_size=40, intermediate_size=88, num_attention_heads=5, num_key_value_heads=1, head_dim=12,
                text_hidden_dim=20, audio_acoustic_hidden_dim=14, timbre_hidden_dim=18, in_channels=42, fsq_dim=52,
                fsq_input_levels=[8, 8, 5], pool_window_size=3),
           dict(hidden_size=56, intermediate_size=104, num_attention_heads=7, num_key_value_heads=7, head_dim=10,
                text_hidden_dim=22, audio_acoustic_hidden_dim=16, timbre_hidden_dim=26, in_channels=48, fsq_dim=68,
                fsq_input_levels=[8, 8, 8, 5, 5], pool_window_size=4)],
}
PROBES["xl"] = [dict(p, encoder_hidden_size=p["hidden_size"] - 12, encoder_intermediate_size=p["intermediate_size"] + 6,
                     encoder_num_attention_heads=p["num_attention_heads"] + 2, encoder_num_key_value_heads=p["num_key_value_heads"] + 1)
                for p in PROBES["2b"]]
COMMON = dict(num_hidden_layers=3, num_lyric_encoder_hidden_layers=2, num_timbre_encoder_hidden_layers=3,
              num_attention_pooler_hidden_layers=2, patch_size=3, sliding_window=8)


def _candidates(layout: str) -> list[str]:
    syms = list(nc.SYMBOLS) if layout == "xl" else [s for s in nc.SYMBOLS if not s.startswith("E")]
    heads = ["NH*D", "KV*D"] + (["ENH*D", "EKV*D"] if layout == "xl" else [])
    return syms + heads + ["6*H"] + (["6*EH"] if layout == "xl" else []) + ["1", "2", "6", "256"]


def write_layout(out_dir: Path) -> None:
    for layout in ("2b", "xl"):
        shapes = []
        for probe in PROBES[layout]:
            cfg = nc.native_config_from(dict(COMMON, **probe), variant="turbo")
            shapes.append({k: tuple(v.shape) for k, v in upstream_model(layout, cfg).state_dict().items()})
            shapes[-1] = (cfg, shapes[-1])
        tensors: dict[str, list[str]] = {}
        for key in shapes[0][1]:
            template = re.sub(r"\.layers\.\d+\.", ".layers.{i}.", key)
            if template in tensors:
                continue
            dims = []
            for d in range(len(shapes[0][1][key])):
                ok = [e for e in _candidates(layout)
                      if all(nc.eval_dim(e, cfg) == s[key][d] for cfg, s in shapes)]
                if len(ok) != 1:
                    raise SystemExit(f"{layout} {key} dim {d}: expressions {ok} explain {[s[key][d] for _, s in shapes]}")
                dims.append(ok[0])
            tensors[template] = dims
        groups = {g: n for g, n in nc.LAYER_GROUPS.items() if any(t.startswith(g + ".{i}.") for t in tensors)}
        data = {"source": f"upstream ACE-Step-1.5 {MODEL_FILES[layout]}.AceStepConditionGenerationModel state_dict",
                "layer_groups": groups, "tensors": tensors}
        path = out_dir / f"{layout}.json"
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"{path}: {len(tensors)} key templates")


# ---------------------------------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------------------------------

PARITY_SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, sliding_window=5, num_lyric_encoder_hidden_layers=2,
                   num_timbre_encoder_hidden_layers=2, num_attention_pooler_hidden_layers=1)
PARITY_XL = dict(PARITY_SIZE, hidden_size=80, intermediate_size=160, num_attention_heads=5, num_key_value_heads=1,
                 encoder_hidden_size=64, encoder_intermediate_size=128, encoder_num_attention_heads=4,
                 encoder_num_key_value_heads=2)


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(max |a - b|, that over max |b|, max |b|): b is upstream's output."""
    d, ref = (a.double() - b.double()).abs().max().item(), b.double().abs().max().item()
    return d, d / max(ref, 1e-30), ref


@torch.no_grad()
def parity(layout: str, work: Path, seed: int = 0, attn: str = "sdpa") -> list[dict]:
    from diffusers import AceStepPipeline
    from diffusers.pipelines.ace_step import AceStepConditionEncoder

    size = dict(nc.SIZES["tiny"], dit=dict(nc.SIZES["tiny"]["dit"], **(PARITY_XL if layout == "xl" else PARITY_SIZE)))
    root = work / layout
    variant_dir = nc.build(root, size=size, variant="turbo", seed=seed, dtype=torch.float32, shard_mb=0.05)
    native_cfg = json.loads((root / variant_dir / "config.json").read_text())
    ref = upstream_model(layout, native_cfg, attn)
    ref.load_state_dict(nc.read_native_weights(root / variant_dir), strict=True)
    out = work / f"{layout}-diffusers"
    nc.convert(root, variant_dir, out)
    pipe = AceStepPipeline.from_pretrained(str(out), dtype=torch.float32)

    g = torch.Generator().manual_seed(seed)
    B, Lt, Ll, T = 2, 9, 13, 23
    A, text = native_cfg["audio_acoustic_hidden_dim"], native_cfg["text_hidden_dim"]
    text_h, lyric_h = torch.randn(B, Lt, text, generator=g), torch.randn(B, Ll, text, generator=g)
    text_m = torch.ones(B, Lt, dtype=torch.long); text_m[1, 6:] = 0
    lyric_m = torch.ones(B, Ll, dtype=torch.long); lyric_m[0, 10:] = 0
    timbre = pipe.condition_encoder.silence_latent[:, :11].expand(B, -1, -1).contiguous()
    order = torch.arange(B)
    enc_args = dict(text_hidden_states=text_h, text_attention_mask=text_m, lyric_hidden_states=lyric_h,
                    lyric_attention_mask=lyric_m, refer_audio_acoustic_hidden_states_packed=timbre,
                    refer_audio_order_mask=order)
    ref_ehs, ref_mask = ref.encoder(**enc_args)
    ehs, mask = pipe.condition_encoder(**enc_args)
    rows = [dict(layout=layout, part="condition encoder", cls=type(pipe.condition_encoder).__name__,
                 mask_equal=bool(torch.equal(ref_mask.bool(), mask.bool())),
                 **dict(zip(("max_abs", "max_rel", "ref_max"), _diff(ehs * mask[..., None], ref_ehs * ref_mask[..., None]))))]
    if layout == "xl":  # what diffusers' own class computes from the same weights
        stock = AceStepConditionEncoder.from_pretrained(str(out / "condition_encoder"), dtype=torch.float32).eval()
        s_ehs, s_mask = stock(**enc_args)
        rows.append(dict(layout=layout, part="condition encoder", cls="diffusers' own AceStepConditionEncoder",
                         mask_equal=bool(torch.equal(ref_mask.bool(), s_mask.bool())),
                         **dict(zip(("max_abs", "max_rel", "ref_max"), _diff(s_ehs * s_mask[..., None], ref_ehs * ref_mask[..., None])))))

    x = torch.randn(B, T, A, generator=g)
    ctx = torch.randn(B, T, 2 * A, generator=g)
    t = torch.tensor([0.9, 0.35])
    r = torch.tensor([0.4, 0.35])
    ref_v = ref.decoder(hidden_states=x, timestep=t, timestep_r=r, attention_mask=None, encoder_hidden_states=ref_ehs,
                        encoder_attention_mask=None, context_latents=ctx, use_cache=False)[0]
    v = pipe.transformer(hidden_states=x, timestep=t, timestep_r=r, encoder_hidden_states=ref_ehs,
                         context_latents=ctx).sample
    rows.append(dict(layout=layout, part="decoder (DiT)", cls=type(pipe.transformer).__name__, mask_equal=None,
                     **dict(zip(("max_abs", "max_rel", "ref_max"), _diff(v, ref_v)))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, type=Path, help="ACE-Step-1.5 checkout")
    ap.add_argument("--deps", type=Path, help="extra import folder for upstream's dependencies")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--attn", nargs="+", default=["sdpa", "eager"], help="upstream attention implementations")
    ap.add_argument("command", nargs="?", default="parity", choices=["parity", "layout"])
    args = ap.parse_args()
    sys.path[:0] = [str(args.upstream)] + ([str(args.deps)] if args.deps else [])
    torch.manual_seed(0)
    if args.command == "layout":
        write_layout(ROOT / "src/lofi_lora/model/native/layout")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for attn in args.attn:
            for layout in ("2b", "xl"):
                rows += [dict(r, attn=attn) for r in parity(layout, Path(tmp) / attn, attn=attn)]
    print("| layout | upstream attention | output | diffusers class | max abs diff | max rel diff | max abs upstream | "
          "masks equal |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['attn']} | {r['part']} | {r['cls']} | {r['max_abs']:.2e} | {r['max_rel']:.2e} | "
              f"{r['ref_max']:.3g} | "
              f"{'' if r['mask_equal'] is None else r['mask_equal']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
