"""ACE-Step 1.5 checkpoints as upstream publishes them (the "native" layout) and their conversion to diffusers.

Native layout (`model.path` = the `checkpoints/` root of upstream's download):

    checkpoints/
      acestep-v15-turbo/            config.json, model.safetensors (or model.safetensors.index.json + shards),
                                    silence_latent.pt ([1, C, T] float32)
      vae/                          AutoencoderOobleck in diffusers format
      Qwen3-Embedding-0.6B/         Qwen3Model + tokenizer files

`convert` writes the folder `AceStepPipeline.from_pretrained` loads: `decoder.*` -> transformer/ (`proj_in.1` ->
`proj_in_conv`, `proj_out.1` -> `proj_out_conv`), `encoder.*` + `null_condition_emb` + the transposed silence latent
-> condition_encoder/, `tokenizer.*` / `detokenizer.*` -> audio_tokenizer/ / audio_token_detokenizer/, attention
projections renamed to diffusers' (`q_proj` -> `to_q`, `o_proj` -> `to_out.0`, `q_norm` -> `norm_q`, ...), configs
from the native config.json (XL: the condition encoder's own `encoder_*` sizes, projected by the DiT's
`condition_embedder`; `is_turbo`, `model_version`), a FlowMatchEulerDiscreteScheduler with `num_train_timesteps=1,
shift=1` (the pipeline passes its own shifted sigmas), and the VAE, text encoder and tokenizer as they are. Every
native key must land on a diffusers parameter of the same shape, and diffusers must report no missing, unexpected
or mismatched key when it loads the result; otherwise a ModelError names the keys.

`converted_pipeline` keeps the result in a content-addressed cache next to the checkpoint
(`<checkpoints>/lofi-lora-diffusers/<variant dir>-<hash of the inputs>/`, with `conversion.json`), so a checkpoint
is converted once, whatever the experiment, clone or branch (README, "Your own music on a GPU").

`convert` plans and checks every key from the safetensors headers before reading a tensor, then moves one component at
a time: peak memory is about the largest component, the DiT (benchmarks/NOTES.md).

`build` writes a random-weight checkpoint in the native layout at any size, so the whole chain (conversion
included) runs without the real weights. Key names and shape rules come from `native_layout/{2b,xl}.json`, derived
from upstream's own module tree by `benchmarks/native_parity.py layout`, not from diffusers, so conversion tests are
not circular. The DiT is drawn tensor by tensor directly in the target dtype and written shard by shard (peak memory
about one shard), on the GPU when there is one:

    python -m lofi_lora.model.native.convert build --size {tiny,2b,xl} --variant {turbo,base,sft} OUT_DIR
        [--seed 0] [--dtype bfloat16|float32] [--shard-mb MB (0: one file; default: 0 for 2b/tiny, 4000 for xl)]
        [--device cpu|cuda] [--presets presets]
        -> OUT_DIR/acestep-v15[-xl]-<variant>/, OUT_DIR/vae/, OUT_DIR/Qwen3-Embedding-0.6B/
    python -m lofi_lora.model.native.convert convert CHECKPOINTS_DIR VARIANT_DIR OUT_DIR
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch

from lofi_lora.core.errors import ConfigError, ModelError
from lofi_lora.core.fsutil import atomic_dir, atomic_write_json, read_json, sha256_file
from lofi_lora.model.encode import SAMPLE_RATE, encode_silence
from lofi_lora.model.tiny import tokenizer_corpus, train_tokenizer
from lofi_lora.model.variants import TABLE as VARIANTS
from lofi_lora.model.xl import AceStepXLConditionEncoder

log = logging.getLogger(__name__)

CONVERTER_VERSION = 2  # 2: the XL condition encoder's module is lofi_lora.model.xl (model_index.json names it)
LAYOUT_DIR = Path(__file__).with_name("layout")
VAE_DIR, TEXT_DIR = "vae", "Qwen3-Embedding-0.6B"
CACHE_DIR = "lofi-lora-diffusers"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja")
SILENCE_FRAMES = 15000  # diffusers' condition-encoder buffer length (10 min at 25 Hz), as upstream's silence_latent.pt

# Shape-rule symbols -> native config.json keys (E*: XL's condition encoder; 2B configs fall back to the DiT's).
SYMBOLS = {"H": "hidden_size", "I": "intermediate_size", "NH": "num_attention_heads", "KV": "num_key_value_heads",
           "D": "head_dim", "T": "text_hidden_dim", "A": "audio_acoustic_hidden_dim", "TB": "timbre_hidden_dim",
           "CIN": "in_channels", "P": "patch_size", "F": "fsq_dim", "Q": "fsq_input_levels", "W": "pool_window_size",
           "EH": "encoder_hidden_size", "EI": "encoder_intermediate_size", "ENH": "encoder_num_attention_heads",
           "EKV": "encoder_num_key_value_heads"}
LAYER_GROUPS = {"decoder.layers": "num_hidden_layers", "encoder.lyric_encoder.layers": "num_lyric_encoder_hidden_layers",
                "encoder.timbre_encoder.layers": "num_timbre_encoder_hidden_layers",
                "tokenizer.attention_pooler.layers": "num_attention_pooler_hidden_layers",
                "detokenizer.layers": "num_attention_pooler_hidden_layers"}
ATTN_RENAMES = ((".q_proj.", ".to_q."), (".k_proj.", ".to_k."), (".v_proj.", ".to_v."), (".o_proj.", ".to_out.0."),
                (".q_norm.", ".norm_q."), (".k_norm.", ".norm_k."))
# native key prefix -> (diffusers component, prefix there)
COMPONENT_PREFIXES = (("decoder.", "transformer"), ("encoder.", "condition_encoder"),
                      ("tokenizer.", "audio_tokenizer"), ("detokenizer.", "audio_token_detokenizer"))

# Upstream's AceStepConfig defaults (configuration_acestep_v15.py) = the 2B DiT; sizes override them.
UPSTREAM_CONFIG = dict(vocab_size=64003, fsq_dim=2048, fsq_input_levels=[8, 8, 8, 5, 5, 5], fsq_input_num_quantizers=1,
                       hidden_size=2048, intermediate_size=6144, num_hidden_layers=24, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=32768,
                       initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, tie_word_embeddings=True,
                       rope_theta=1000000, rope_scaling=None, attention_bias=False, use_sliding_window=True,
                       sliding_window=128, attention_dropout=0.0, num_lyric_encoder_hidden_layers=8,
                       audio_acoustic_hidden_dim=64, pool_window_size=5, text_hidden_dim=1024, in_channels=192,
                       data_proportion=0.5, timestep_mu=-0.4, timestep_sigma=1.0, timbre_hidden_dim=64,
                       num_timbre_encoder_hidden_layers=4, timbre_fix_frame=750, patch_size=2,
                       num_attention_pooler_hidden_layers=2, num_audio_decoder_hidden_layers=24)
_XL_ENCODER = dict(encoder_hidden_size=2048, encoder_intermediate_size=6144, encoder_num_attention_heads=16,
                   encoder_num_key_value_heads=8)
_REAL_VAE = dict(encoder_hidden_size=128, channel_multiples=[1, 2, 4, 8, 16], downsampling_ratios=[2, 4, 4, 6, 10],
                 decoder_channels=128, decoder_input_channels=64)
_REAL_TEXT = dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128)
SIZES: dict[str, dict[str, dict]] = {
    "2b": {"dit": {}, "vae": _REAL_VAE, "text": _REAL_TEXT},
    "xl": {"dit": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, **_XL_ENCODER), "vae": _REAL_VAE, "text": _REAL_TEXT},
    "tiny": {"dit": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, sliding_window=16, num_lyric_encoder_hidden_layers=1,
                         num_timbre_encoder_hidden_layers=1, text_hidden_dim=32, audio_acoustic_hidden_dim=8,
                         timbre_hidden_dim=8, in_channels=24, fsq_dim=32, num_attention_pooler_hidden_layers=1),
             "vae": dict(encoder_hidden_size=16, channel_multiples=[1, 2, 4, 8, 8], downsampling_ratios=[2, 4, 4, 6, 10],
                         decoder_channels=8, decoder_input_channels=8),
             "text": dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8)},
}


def variant_dir_name(variant: str, xl: bool) -> str:
    """Upstream's folder name for a variant: acestep-v15-turbo, acestep-v15-xl-sft, ..."""
    return f"acestep-v15-{'xl-' if xl else ''}{variant}"


# --------------------------------------------------------------------------------------------------------------
# layout rules
# --------------------------------------------------------------------------------------------------------------

def is_xl(cfg: dict) -> bool:
    """XL checkpoints carry a separate condition-encoder width (`encoder_hidden_size`); 2B ones do not."""
    return cfg.get("encoder_hidden_size") is not None


def _symbol(name: str, cfg: dict) -> int:
    key = SYMBOLS[name]
    if key not in cfg and name.startswith("E"):
        key = SYMBOLS[name[1:]]
    value = cfg[key]
    return len(value) if isinstance(value, list) else int(value)


def eval_dim(expr: str, cfg: dict) -> int:
    """A shape rule like `NH*D` or `6*H` evaluated on a native config."""
    return math.prod(int(t) if t.isdigit() else _symbol(t, cfg) for t in expr.split("*"))


def native_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every key of the native `model.safetensors` with its shape, from the layout rules for this config's size."""
    layout = read_json(LAYOUT_DIR / f"{'xl' if is_xl(cfg) else '2b'}.json")
    out: dict[str, tuple[int, ...]] = {}
    for template, dims in layout["tensors"].items():
        shape = tuple(eval_dim(d, cfg) for d in dims)
        group = next((g for g in layout["layer_groups"] if template.startswith(g + ".{i}.")), None)
        count = int(cfg[layout["layer_groups"][group]]) if group else 1
        for i in range(count):
            out[template.replace("{i}", str(i))] = shape
    return out


def native_config_from(dit: dict, variant: str) -> dict:
    """A native config.json (upstream's AceStepConfig fields plus variant flags) for DiT sizes `dit`."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    cfg = dict(UPSTREAM_CONFIG, **dit)
    cfg["layer_types"] = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                          for i in range(cfg["num_hidden_layers"])]
    cfg.update(architectures=["AceStepConditionGenerationModel"], model_type="acestep",
               is_turbo=VARIANTS[variant].turbo, model_version=variant)
    return cfg


# --------------------------------------------------------------------------------------------------------------
# building a random-weight native checkpoint
# --------------------------------------------------------------------------------------------------------------

def _random_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype,
                   device: str) -> torch.Tensor:
    """Norm weights near 1, everything else N(0, 0.02): finite, non-trivial activations at any depth."""
    t = torch.randn(shape, generator=gen, device=device, dtype=dtype).mul_(0.02)
    if key.endswith(("norm.weight", "norm_out.weight")):
        t.add_(1.0)
    return t.cpu()


def _write_weights(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype, device: str,
                   shard_bytes: int) -> None:
    """Random tensors for `shapes` as model.safetensors, or shards + model.safetensors.index.json past `shard_bytes`.

    Files go into a folder that `atomic_dir` swaps in whole, so they are written in place (no in-memory copy)."""
    from safetensors.torch import save_file

    gen = torch.Generator(device=device).manual_seed(seed)
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = sum(math.prod(s) for s in shapes.values()) * itemsize
    n_shards = max(1, math.ceil(total / shard_bytes)) if shard_bytes > 0 else 1
    shards: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():  # greedy split by bytes, in key order
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and n_shards > 1 and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, keys in zip(names, shards):
        save_file({k: _random_tensor(k, shapes[k], gen, dtype, device) for k in keys}, str(folder / name),
                  metadata={"format": "pt"})
    if len(shards) > 1:
        atomic_write_json(folder / "model.safetensors.index.json",
                          {"metadata": {"total_size": total},
                           "weight_map": {k: n for n, keys in zip(names, shards) for k in keys}})


def build(out_dir: str | Path, size: str | dict = "tiny", variant: str = "turbo", seed: int = 0,
          dtype: torch.dtype = torch.bfloat16, shard_mb: float | None = None, device: str | None = None,
          presets_dir: str | Path = "presets") -> str:
    """Random-weight ACE-Step 1.5 checkpoint in upstream's native layout under `out_dir`; returns the variant folder name.

    `size`: "tiny", "2b", "xl" or a dict like `SIZES[...]`. The VAE and text encoder are diffusers/transformers
    models at that size (tokenizer: byte-level BPE trained on `presets_dir`); the silence latent is the VAE encoding
    of digital silence, stored as upstream does ([1, C, 15000], float32).
    """
    from diffusers import AutoencoderOobleck
    from transformers import Qwen3Config, Qwen3Model

    spec = SIZES[size] if isinstance(size, str) else size
    cfg = native_config_from(spec["dit"], variant)
    xl = is_xl(cfg)
    name = variant_dir_name(variant, xl)
    shard_bytes = int((shard_mb if shard_mb is not None else (4000 if size == "xl" else 0)) * 1e6)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    torch.manual_seed(seed + 1)
    with torch.device(device):  # init and the silence encode on the GPU when there is one
        vae = AutoencoderOobleck(audio_channels=2, sampling_rate=SAMPLE_RATE, **spec["vae"]).eval()
    latent = cfg["audio_acoustic_hidden_dim"]
    if vae.config.decoder_input_channels != latent or vae.config.encoder_hidden_size != 2 * latent:
        raise ConfigError(f"size: the VAE's latent (decoder_input_channels, encoder_hidden_size / 2) must equal the "
                          f"DiT's audio_acoustic_hidden_dim = {latent}")
    with atomic_dir(out / VAE_DIR) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
    silence = encode_silence(vae, SILENCE_FRAMES).transpose(1, 2).contiguous().float().cpu()  # [1, C, T] as upstream
    del vae

    text = spec["text"]
    if text["hidden_size"] != cfg["text_hidden_dim"]:
        raise ConfigError("size: text encoder hidden_size must equal the DiT's text_hidden_dim")
    tokenizer = train_tokenizer(tokenizer_corpus(presets_dir), min(int(text["vocab_size"]), 4096))
    torch.manual_seed(seed + 2)
    text_cfg = Qwen3Config(max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                           tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **text)
    with torch.device(device):
        text_encoder = Qwen3Model(text_cfg).to(dtype).eval()
    with atomic_dir(out / TEXT_DIR) as tmp:
        text_encoder.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    del text_encoder

    with atomic_dir(out / name) as tmp:
        atomic_write_json(tmp / "config.json", cfg)
        torch.save(silence, tmp / "silence_latent.pt")
        _write_weights(tmp, native_shapes(cfg), seed, dtype, device, shard_bytes)
    log.info("built native %s checkpoint %s in %s (%.1f s)", size if isinstance(size, str) else "custom", name, out,
             time.perf_counter() - t0)
    return name


# --------------------------------------------------------------------------------------------------------------
# reading and converting
# --------------------------------------------------------------------------------------------------------------

def weight_files(variant_dir: Path) -> list[Path]:
    """The DiT's safetensors files: model.safetensors, or every shard model.safetensors.index.json names."""
    single, index = variant_dir / "model.safetensors", variant_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        names = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [n for n in names if not (variant_dir / n).is_file()]
        if not names or missing:
            raise ModelError(f"{index}: shards missing: {missing or 'weight_map is empty'}")
        return [variant_dir / n for n in names]
    raise ModelError(f"{variant_dir}: neither model.safetensors nor model.safetensors.index.json")


def native_tensor_index(variant_dir: str | Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """`{native key: (file, shape)}` from the safetensors headers alone (no tensor is read)."""
    from safetensors import safe_open

    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for f in weight_files(Path(variant_dir)):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if k in out:
                    raise ModelError(f"{f}: key {k!r} is also in {out[k][0].name}")
                out[k] = (f, tuple(st.get_slice(k).get_shape()))
    return out


def read_native_weights(variant_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a native checkpoint (single file or sharded), on CPU in its stored dtype."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(variant_dir)):
        part = load_file(str(f))
        dup = sorted(set(part) & set(out))
        if dup:
            raise ModelError(f"{f}: keys also in another shard: {dup[:5]}")
        out.update(part)
    return out


def diffusers_key(native_key: str) -> tuple[str, str]:
    """(component, key there) for a native key; ModelError for a key no rule maps."""
    if native_key == "null_condition_emb":
        return "condition_encoder", native_key
    for prefix, component in COMPONENT_PREFIXES:
        if native_key.startswith(prefix):
            key = native_key[len(prefix):]
            if component == "transformer":
                key = key.replace("proj_in.1.", "proj_in_conv.").replace("proj_out.1.", "proj_out_conv.")
            for old, new in ATTN_RENAMES:
                key = key.replace(old, new)
            return component, key
    raise ModelError(f"native key {native_key!r} has no diffusers counterpart")


def component_configs(cfg: dict) -> dict[str, dict]:
    """Constructor arguments of the four diffusers models, from a native config.json."""
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "num_key_value_heads", "head_dim", "in_channels", "audio_acoustic_hidden_dim",
                           "patch_size", "text_hidden_dim", "timbre_hidden_dim", "num_lyric_encoder_hidden_layers",
                           "num_timbre_encoder_hidden_layers", "layer_types") if k not in cfg]
    if missing:
        raise ModelError(f"native config.json lacks {missing}")
    if not cfg.get("use_sliding_window", True):
        raise ModelError("native config.json: use_sliding_window=false is not supported by diffusers' ACE-Step")
    layer_types = list(cfg["layer_types"])
    default = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(len(layer_types))]
    n_timbre, n_pool = int(cfg["num_timbre_encoder_hidden_layers"]), int(cfg.get("num_attention_pooler_hidden_layers", 2))
    if layer_types[:max(n_timbre, n_pool)] != default[:max(n_timbre, n_pool)]:
        raise ModelError("native config.json: layer_types must alternate sliding/full in the encoder's first layers "
                         "(diffusers' timbre encoder assumes it)")
    shared = dict(rope_theta=cfg.get("rope_theta", 1000000), attention_bias=cfg.get("attention_bias", False),
                  attention_dropout=cfg.get("attention_dropout", 0.0), rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
                  sliding_window=cfg.get("sliding_window", 128), head_dim=cfg["head_dim"])
    enc = dict(shared, hidden_size=cfg.get("encoder_hidden_size") or cfg["hidden_size"],
               intermediate_size=cfg.get("encoder_intermediate_size") or cfg["intermediate_size"],
               num_attention_heads=cfg.get("encoder_num_attention_heads") or cfg["num_attention_heads"],
               num_key_value_heads=cfg.get("encoder_num_key_value_heads") or cfg["num_key_value_heads"])
    pool = dict(enc, audio_acoustic_hidden_dim=cfg["audio_acoustic_hidden_dim"],
                pool_window_size=cfg.get("pool_window_size", 5), num_attention_pooler_hidden_layers=n_pool,
                layer_types=layer_types[:n_pool])
    return {
        "transformer": dict(shared, hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                            num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
                            num_key_value_heads=cfg["num_key_value_heads"], in_channels=cfg["in_channels"],
                            audio_acoustic_hidden_dim=cfg["audio_acoustic_hidden_dim"], patch_size=cfg["patch_size"],
                            layer_types=layer_types, encoder_hidden_size=enc["hidden_size"],
                            is_turbo=bool(cfg.get("is_turbo", False)), model_version=cfg.get("model_version")),
        "condition_encoder": dict(enc, text_hidden_dim=cfg["text_hidden_dim"], timbre_hidden_dim=cfg["timbre_hidden_dim"],
                                  num_lyric_encoder_hidden_layers=cfg["num_lyric_encoder_hidden_layers"],
                                  num_timbre_encoder_hidden_layers=n_timbre,
                                  layer_types=layer_types[:int(cfg["num_lyric_encoder_hidden_layers"])]),
        "audio_tokenizer": dict(pool, fsq_dim=cfg.get("fsq_dim", enc["hidden_size"]),
                                fsq_input_levels=list(cfg.get("fsq_input_levels", [8, 8, 8, 5, 5, 5])),
                                fsq_input_num_quantizers=cfg.get("fsq_input_num_quantizers", 1)),
        "audio_token_detokenizer": pool,
    }


def component_classes(cfg: dict) -> dict[str, type]:
    """The diffusers class of each converted model (XL: the condition encoder with upstream's timbre CLS token)."""
    from diffusers import (AceStepAudioTokenDetokenizer, AceStepAudioTokenizer, AceStepConditionEncoder,
                           AceStepTransformer1DModel)

    return {"transformer": AceStepTransformer1DModel,
            "condition_encoder": AceStepXLConditionEncoder if is_xl(cfg) else AceStepConditionEncoder,
            "audio_tokenizer": AceStepAudioTokenizer, "audio_token_detokenizer": AceStepAudioTokenDetokenizer}


def _check_against(expected: dict[str, dict[str, tuple]], got: dict[str, dict[str, tuple]],
                   origin: dict[tuple[str, str], str]) -> None:
    """Mapped keys and shapes against diffusers' models' state dicts; one ModelError naming every problem
    (missing keys by their diffusers name, unexpected and mis-shaped ones by their native name)."""
    problems = []
    for comp, shapes in expected.items():
        have = got.get(comp, {})
        missing = sorted(set(shapes) - set(have))
        extra = sorted(origin.get((comp, k), k) for k in set(have) - set(shapes))
        wrong = sorted(k for k in set(shapes) & set(have) if tuple(have[k]) != shapes[k])
        if missing:
            problems.append(f"{comp}: missing {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)})")
        if extra:
            problems.append(f"{comp}: unexpected native keys {extra[:8]}{' ...' if len(extra) > 8 else ''} ({len(extra)})")
        if wrong:
            problems.append(f"{comp}: shape mismatch " + ", ".join(
                f"{origin.get((comp, k), k)} {tuple(have[k])} vs {shapes[k]}" for k in wrong[:8]))
    if problems:
        raise ModelError("native -> diffusers conversion does not match diffusers' models: " + "; ".join(problems))


def _read_component(comp: str, keys: dict[str, tuple], origin: dict[tuple[str, str], str],
                    files: dict[tuple[str, str], Path]) -> dict[str, torch.Tensor]:
    """One component's tensors under their diffusers names, read shard by shard from the native files."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for new in keys:
        if (comp, new) in files:
            by_file.setdefault(files[(comp, new)], []).append(new)
    out = {}
    for f, names in by_file.items():
        with safe_open(str(f), framework="pt") as st:
            for new in names:
                out[new] = st.get_tensor(origin[(comp, new)])
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same filesystem: no second copy of the VAE / text-encoder weights
    except OSError:
        shutil.copy2(src, dst)


def convert(root: str | Path, variant_dir: str, out_dir: str | Path) -> dict:
    """Convert `root/variant_dir` (+ `root/vae`, `root/Qwen3-Embedding-0.6B`) into a diffusers folder `out_dir`.

    Returns a summary (key counts per component, silence-latent shape, XL flag).
    Raises:
        ModelError: a missing file, a key without a diffusers counterpart, a shape mismatch, or any key diffusers
        reports missing/unexpected/mismatched when loading the result (all named).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler
    from safetensors.torch import save_file

    root, out = Path(root), Path(out_dir)
    src = root / variant_dir
    for need in (src / "config.json", src / "silence_latent.pt", root / VAE_DIR / "config.json",
                 root / TEXT_DIR / "config.json"):
        if not need.is_file():
            raise ModelError(f"native checkpoint {root}: {need.relative_to(root)} is missing")
    cfg = read_json(src / "config.json")
    if cfg.get("model_type") not in (None, "acestep"):
        raise ModelError(f"{src}/config.json: model_type {cfg.get('model_type')!r}, expected 'acestep'")
    configs, classes = component_configs(cfg), component_classes(cfg)

    # Plan and check on the headers first, then move one component at a time: peak memory ~ 2x the largest one.
    shapes: dict[str, dict[str, tuple]] = {c: {} for c in configs}
    origin: dict[tuple[str, str], str] = {}
    files: dict[tuple[str, str], Path] = {}
    unmapped = []
    for key, (f, shape) in native_tensor_index(src).items():
        try:
            comp, new = diffusers_key(key)
        except ModelError:
            unmapped.append(key)
            continue
        shapes[comp][new], origin[(comp, new)], files[(comp, new)] = shape, key, f
    if unmapped:
        raise ModelError(f"{src}: {len(unmapped)} native keys have no diffusers counterpart: {sorted(unmapped)[:10]}")
    silence = torch.load(src / "silence_latent.pt", map_location="cpu", weights_only=True)
    if not isinstance(silence, torch.Tensor) or silence.dim() != 3 or silence.shape[1] != cfg["timbre_hidden_dim"]:
        raise ModelError(f"{src}/silence_latent.pt: expected a [1, {cfg['timbre_hidden_dim']}, T] tensor, got "
                         f"{getattr(silence, 'shape', type(silence).__name__)}")
    silence = silence.transpose(1, 2).contiguous()
    shapes["condition_encoder"]["silence_latent"] = tuple(silence.shape)

    expected = {}
    for comp, cls in classes.items():
        with torch.device("meta"):
            model = cls(**configs[comp])
        expected[comp] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_against(expected, shapes, origin)

    with atomic_dir(out) as tmp:
        index = {"_class_name": "AceStepPipeline", "_diffusers_version": _diffusers_version()}
        for comp, cls in classes.items():
            sub = tmp / comp
            sub.mkdir()
            atomic_write_json(sub / "config.json", {"_class_name": cls.__name__,
                                                     "_diffusers_version": index["_diffusers_version"], **configs[comp]})
            state = _read_component(comp, shapes[comp], origin, files)
            if comp == "condition_encoder":  # the buffer in the dtype of the encoder's weights, as diffusers' converter
                state["silence_latent"] = silence.to(state["null_condition_emb"].dtype)
            if comp == "transformer":
                dtype = state["proj_in_conv.weight"].dtype
            save_file(state, str(sub / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
            del state
            index[comp] = [cls.__module__ if not cls.__module__.startswith("diffusers") else "diffusers", cls.__name__]
        for comp, name in (("vae", VAE_DIR), ("text_encoder", TEXT_DIR)):
            (tmp / comp).mkdir()
            for f in sorted((root / name).iterdir()):
                if f.is_file() and not f.name.startswith(".") and (comp == "vae" or f.name not in TOKENIZER_FILES):
                    _link_or_copy(f, tmp / comp / f.name)
        (tmp / "tokenizer").mkdir()
        for f in TOKENIZER_FILES:
            if (root / TEXT_DIR / f).is_file():
                _link_or_copy(root / TEXT_DIR / f, tmp / "tokenizer" / f)
        vae_cls = read_json(root / VAE_DIR / "config.json").get("_class_name", "AutoencoderOobleck")
        text_cls, tok_cls = _text_classes(root / TEXT_DIR)
        index.update(vae=["diffusers", vae_cls], text_encoder=["transformers", text_cls],
                     tokenizer=["transformers", tok_cls], scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"])
        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0).save_pretrained(str(tmp / "scheduler"))
        atomic_write_json(tmp / "model_index.json", index)
        loading = _loading_report(tmp, classes, dtype)
    summary = {"xl": is_xl(cfg), "variant_dir": variant_dir, "keys": {c: len(v) for c, v in expected.items()},
               "silence_latent": list(silence.shape), "loading": loading}
    log.info("converted %s -> %s: %s", src, out, summary["keys"])
    return summary


def _text_classes(text_dir: Path) -> tuple[str, str]:
    """(text-encoder class, tokenizer class) as transformers' Auto classes resolve them (the base model, as
    diffusers' converter: Qwen3-Embedding's weights have no LM head)."""
    from transformers import AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    model_type = read_json(text_dir / "config.json").get("model_type")
    if model_type not in MODEL_MAPPING_NAMES:
        raise ModelError(f"{text_dir}/config.json: model_type {model_type!r} is not a transformers model")
    return MODEL_MAPPING_NAMES[model_type], type(AutoTokenizer.from_pretrained(str(text_dir))).__name__


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _loading_report(folder: Path, classes: dict[str, type], dtype: torch.dtype) -> dict[str, int]:
    """Load each converted model with diffusers (in its stored dtype: no float32 copy of an XL DiT); any missing,
    unexpected or mismatched key is a ModelError naming it."""
    counts = {}
    for comp, cls in classes.items():
        model, info = cls.from_pretrained(str(folder / comp), output_loading_info=True, low_cpu_mem_usage=True,
                                          dtype=dtype)
        bad = {k: v for k, v in info.items() if v}
        if bad:
            raise ModelError(f"diffusers loading {comp} from the converted folder reports {bad}")
        counts[comp] = sum(1 for _ in model.state_dict())
        del model
    return counts


# --------------------------------------------------------------------------------------------------------------
# content-addressed cache next to the checkpoint (stage base_model, model.source=native)
# --------------------------------------------------------------------------------------------------------------

def input_files(root: Path, variant_dir: str) -> dict[str, dict]:
    """`{path relative to root: {bytes, sha256}}` of everything the conversion reads."""
    out = {}
    for sub in (variant_dir, VAE_DIR, TEXT_DIR):
        folder = root / sub
        if not folder.is_dir():
            raise ModelError(f"native checkpoint {root}: folder {sub}/ is missing (expected upstream's checkpoints/ "
                             f"root holding {variant_dir}/, {VAE_DIR}/ and {TEXT_DIR}/)")
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = f.relative_to(root)
            if any(part.startswith(".") for part in rel.parts):
                continue
            out[rel.as_posix()] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    return out


def resolve_root(path: str | Path, variant_dir: str | None) -> tuple[Path, str]:
    """(checkpoints root, variant folder name) from `model.path` (the root or the variant folder itself)."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise ConfigError(f"`model.path` = {p}: no such folder (expected upstream's checkpoints/ root)")
    if (p / "config.json").is_file() and (p / "silence_latent.pt").is_file():
        if variant_dir and variant_dir != p.name:
            raise ConfigError(f"`model.path` = {p} is the variant folder {p.name!r} but `model.native_dir` = "
                              f"{variant_dir!r}")
        return p.parent, p.name
    if not variant_dir:
        raise ConfigError("`model.native_dir` is required with model.source=native (e.g. acestep-v15-turbo)")
    return p, str(variant_dir)


def converted_pipeline(path: str | Path, variant_dir: str | None = None, cache_dir: str | Path | None = None) -> tuple[Path, dict]:
    """The diffusers folder for a native checkpoint, converted once per input content; (folder, conversion record).

    The folder is `<cache_dir or root/lofi-lora-diffusers>/<variant dir>-<16 hex of the inputs' hash>/`; its
    `conversion.json` records every input file's sha256 and the converter version, so changed weights or a new
    converter give a new folder and an unchanged checkpoint is reused by every experiment.
    """
    root, name = resolve_root(path, variant_dir)
    inputs = input_files(root, name)
    key = hashlib.sha256(json.dumps({"converter": CONVERTER_VERSION, "inputs": {k: v["sha256"] for k, v in inputs.items()}},
                                    sort_keys=True).encode()).hexdigest()
    out = Path(cache_dir).expanduser().resolve() if cache_dir else root / CACHE_DIR
    out = out / f"{name}-{key[:16]}"
    record_f = out / "conversion.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = open(out.parent / f"{out.name}.lock", "w")  # queued runs of one checkpoint convert it once
    except OSError as e:
        raise ConfigError(f"cannot write the converted checkpoint under {out.parent} ({e.strerror}): point "
                          "`model.converted_dir` at a writable folder") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record_f.is_file() and read_json(record_f).get("key") == key:
            log.info("native checkpoint %s/%s: reusing conversion %s", root, name, out)
            return out, {**read_json(record_f), "root": str(root)}
        summary = convert(root, name, out)
        # Content only (no paths, no times): the record is hashed into the base model's fingerprint.
        record = {"key": key, "converter": CONVERTER_VERSION, "variant_dir": name, "inputs": inputs, **summary}
        atomic_write_json(record_f, record)
    return out, {**record, "root": str(root)}


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lofi_lora.model.native.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="random-weight checkpoint in upstream's native layout")
    b.add_argument("out_dir", type=Path)
    b.add_argument("--size", choices=sorted(SIZES), default="tiny")
    b.add_argument("--variant", choices=VARIANTS, default="turbo")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    b.add_argument("--shard-mb", type=float, default=None)
    b.add_argument("--device", default=None)
    b.add_argument("--presets", type=Path, default=Path("presets"))
    c = sub.add_parser("convert", help="native checkpoint -> diffusers folder")
    c.add_argument("root", type=Path)
    c.add_argument("variant_dir")
    c.add_argument("out_dir", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "build":
        name = build(args.out_dir, args.size, args.variant, args.seed, getattr(torch, args.dtype), args.shard_mb,
                     args.device, args.presets)
        print(args.out_dir / name)
    else:
        print(json.dumps(convert(args.root, args.variant_dir, args.out_dir), indent=1))


if __name__ == "__main__":
    main()
