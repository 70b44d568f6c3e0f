"""All diffusers/transformers model calls: the base ACE-Step 1.5 pipeline and the tensors derived from it.

Stage `base_model` either builds a toy-size pipeline from diffusers' own classes (`model.source=build`) and
saves it to `paths.base_model`, or verifies a real diffusers-format folder (`model.source=diffusers|local|hub`, or
`native`: upstream's checkpoint converted once by `lofi_lora.native_checkpoint`) and writes only `manifest.json`
there, pointing at the weights. Every later stage loads through `model_dir` /
`load_pipeline`, so no code after stage `base_model` knows whether the model is tiny or real.

The encode helpers reproduce exactly what `AceStepPipeline.__call__` computes for text2music (same prompt
formatting, tokenizer settings, silence-latent timbre and context), so cached tensors equal inference inputs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

import lofi_lora.ace_step_xl  # noqa: F401  (registers the XL condition encoder that native XL conversions name)
from lofi_lora.config import require, to_plain
from lofi_lora.errors import ConfigError, ModelError
from lofi_lora.fsutil import atomic_dir, atomic_write_json, read_json, sha256_file
from lofi_lora.model_variant import VARIANTS, check_variant

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SAMPLE_RATE = 48000
EOS_TOKEN = "<|endoftext|>"
# component -> (libraries, class) as model_index.json records them; None: any class of that library.
# The condition encoder lives in the pipeline's own module, which model_index.json names "ace_step".
COMPONENTS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "vae": (("diffusers",), "AutoencoderOobleck"),
    "text_encoder": (("transformers",), None),
    "tokenizer": (("transformers",), None),
    "transformer": (("diffusers",), "AceStepTransformer1DModel"),
    "condition_encoder": (("ace_step", "diffusers", "lofi_lora.ace_step_xl"), None),  # XL: see ace_step_xl.py
    "scheduler": (("diffusers",), "FlowMatchEulerDiscreteScheduler"),
}
WEIGHT_COMPONENTS = ("vae", "text_encoder", "transformer", "condition_encoder")


# --------------------------------------------------------------------------------------------------------------
# loading (every stage after base_model)
# --------------------------------------------------------------------------------------------------------------

def read_manifest(base_model_path: str | Path) -> dict:
    """The manifest stage base_model wrote; a clear ModelError when the stage has not run."""
    path = Path(base_model_path) / MANIFEST
    if not path.is_file():
        raise ModelError(f"{path} is missing: run stage base_model first (`dvc repro base_model`)")
    return read_json(path)


def model_dir(model_cfg, base_model_path: str | Path) -> Path:
    """Folder to load the pipeline from: `base_model_path` itself (built) or the verified `model.path` / hub snapshot.

    Raises:
        ModelError: the manifest belongs to another model config, or the weights moved or changed size.
    """
    base = Path(base_model_path)
    manifest = read_manifest(base)
    name, source = str(require(model_cfg, "name")), str(require(model_cfg, "source"))
    if manifest.get("name") != name or manifest.get("source") != source:
        raise ModelError(f"{base / MANIFEST} was written for model {manifest.get('name')!r} "
                         f"(source {manifest.get('source')!r}), the config asks for {name!r} ({source!r}): "
                         "run stage base_model again")
    folder = Path(manifest["weights_dir"]) if manifest.get("weights_dir") else base
    if not folder.is_dir():
        key = "model.hub_id" if source == "hub" else "model.path"
        raise ModelError(f"`{key}`: weights folder {folder} recorded in {base / MANIFEST} no longer exists")
    for rel, rec in manifest.get("files", {}).items():  # cheap check (sizes); sha256 was taken by base_model
        f = folder / rel
        if not f.is_file() or f.stat().st_size != rec["bytes"]:
            raise ModelError(f"{f} is missing or changed since stage base_model fingerprinted it: "
                             "run stage base_model again")
    return folder


def model_fingerprint(base_model_path: str | Path) -> str:
    """Hash of every weight/config file of the base model (from its manifest): keys caches derived from it."""
    return str(read_manifest(base_model_path)["fingerprint"])


def load_pipeline(model_cfg, base_model_path: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32):
    """`AceStepPipeline` in `dtype` on `device`, from the folder `model_dir` names (offline)."""
    from diffusers import AceStepPipeline

    folder = model_dir(model_cfg, base_model_path)
    # The audio tokenizer/detokenizer (cover / audio-code tasks, ~0.2 B parameters) are not used for text2music.
    pipe = AceStepPipeline.from_pretrained(str(folder), dtype=dtype, audio_tokenizer=None, audio_token_detokenizer=None)
    # Oobleck's activations grow with clip length (about 145 MiB per second of stereo audio in float32): one 240 s
    # clip alone needs tens of GiB untiled. diffusers' overlap-discard tiling (30 s windows, 2 s overlap per side on
    # encode, as upstream's trainers do) bounds it; the trimmed overlap keeps tile seams out of the latents.
    pipe.vae.enable_tiling()
    return pipe.to(device)


def load_transformer(model_cfg, base_model_path: str | Path, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32):
    """Only the DiT (`AceStepTransformer1DModel`): what training needs once conditions are cached."""
    from diffusers import AceStepTransformer1DModel

    folder = model_dir(model_cfg, base_model_path)
    model = AceStepTransformer1DModel.from_pretrained(str(folder), subfolder="transformer", dtype=dtype)
    return model.to(device)


# --------------------------------------------------------------------------------------------------------------
# the tensors the DiT consumes (cache, training, evaluation)
# --------------------------------------------------------------------------------------------------------------

def latent_hop(pipe) -> int:
    """Audio samples per latent frame (1920 for ACE-Step 1.5: 25 Hz at 48 kHz)."""
    return int(math.prod(pipe.vae.config.downsampling_ratios))


def latent_frames(pipe, num_samples: int) -> int:
    """Latent frames for `num_samples` audio samples (the audio is zero-padded up to whole frames)."""
    return -(-int(num_samples) // latent_hop(pipe))


def prompt_metas(bpm: Any = None, keyscale: Any = None, timesignature: Any = None) -> dict:
    """Sidecar values in the types `AceStepPipeline` expects (int bpm, str key and time signature, None if unknown)."""
    try:
        bpm_i = int(round(float(bpm))) if bpm not in (None, "", "N/A") else None
    except (TypeError, ValueError):
        bpm_i = None
    ks = str(keyscale).strip() if keyscale not in (None, "N/A") else None
    ts = str(timesignature).strip() if timesignature not in (None, "N/A") else None
    return {"bpm": bpm_i if bpm_i and bpm_i > 0 else None, "keyscale": ks or None, "timesignature": ts or None}


def _per_sample(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for {n} samples")
        return list(value)
    return [value] * n


@torch.no_grad()
def encode_conditions(pipe, captions: Sequence[str], lyrics: Sequence[str], *,
                      vocal_language: str | Sequence[str] = "en", bpm: Any = None, keyscale: Any = None,
                      timesignature: Any = None, duration_s: float | Sequence[float] | None = None,
                      max_text_tokens: int = 256, max_lyric_tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Condition-encoder output for a batch, as `AceStepPipeline.__call__` computes it for text2music.

    Each sample is formatted with the pipeline's own `_format_prompt` (SFT template, metas, lyric header) and
    its own metas (scalars apply to all samples). The batch is right-padded; because the text encoder is
    causal and the lyric encoder masks padding, every sample's valid tokens equal a batch-of-one call (which is
    what inference runs). Timbre comes from the condition encoder's silence latent (no reference audio).

    Returns:
        encoder_hidden_states `[B, L, H]` (valid tokens first, padding zeroed) and encoder_attention_mask
        `[B, L]` (bool); sample i's conditions are `states[i, :mask[i].sum()]`.
    """
    n = len(captions)
    langs = _per_sample(vocal_language, n, "vocal_language")
    bpms, keys, sigs = (_per_sample(v, n, k) for v, k in ((bpm, "bpm"), (keyscale, "keyscale"),
                                                           (timesignature, "timesignature")))
    durs = _per_sample(duration_s, n, "duration_s")
    texts, lyric_texts = [], []
    for i in range(n):
        metas = prompt_metas(bpms[i], keys[i], sigs[i])
        t, ly = pipe._format_prompt(prompt=captions[i], lyrics=lyrics[i] or "", vocal_language=langs[i] or "en",
                                    audio_duration=durs[i] if durs[i] else 60.0, instruction=None, **metas)
        texts.append(t)
        lyric_texts.append(ly)

    device = pipe._execution_device
    dtype = pipe.transformer.dtype
    tok = pipe.tokenizer
    text_in = tok(texts, padding="longest", truncation=True, max_length=max_text_tokens, return_tensors="pt",
                  padding_side="right")
    lyric_in = tok(lyric_texts, padding="longest", truncation=True, max_length=max_lyric_tokens,
                   return_tensors="pt", padding_side="right")
    text_ids, text_mask = text_in.input_ids.to(device), text_in.attention_mask.to(device).bool()
    lyric_ids, lyric_mask = lyric_in.input_ids.to(device), lyric_in.attention_mask.to(device).bool()
    text_states = pipe.text_encoder(input_ids=text_ids).last_hidden_state
    lyric_states = pipe.text_encoder.get_input_embeddings()(lyric_ids)

    timbre_frames = math.ceil(30 * pipe.latents_per_second)
    timbre = (pipe.condition_encoder.silence_latent[:, :timbre_frames, :].to(device=device, dtype=dtype)
              .expand(n, -1, -1).contiguous())
    order = torch.arange(n, device=device, dtype=torch.long)
    states, mask = pipe.condition_encoder(
        text_hidden_states=text_states.to(dtype), text_attention_mask=text_mask,
        lyric_hidden_states=lyric_states.to(dtype), lyric_attention_mask=lyric_mask,
        refer_audio_acoustic_hidden_states_packed=timbre, refer_audio_order_mask=order)
    states = states * mask.unsqueeze(-1).to(states.dtype)
    width = int(mask.sum(dim=1).max())
    return states[:, :width].contiguous(), mask[:, :width].contiguous()


@torch.no_grad()
def encode_audio(pipe, audio: torch.Tensor, generator: torch.Generator | list | None = None,
                 sample: bool = True) -> torch.Tensor:
    """48 kHz stereo `[B, 2, N]` -> target latents `[B, T, C]` (T = ceil(N / hop), C = 64 on the real model).

    Like upstream 1.5 preprocessing the latent is drawn from the VAE posterior (`sample=True`); pass one seeded
    generator per sample to make it reproducible. `sample=False` returns the posterior mean.
    """
    from diffusers.utils.torch_utils import randn_tensor

    if audio.dim() != 3 or audio.shape[1] != pipe.vae.config.audio_channels:
        raise ValueError(f"audio must be [B, {pipe.vae.config.audio_channels}, N], got {tuple(audio.shape)}")
    hop = latent_hop(pipe)
    pad = (-audio.shape[-1]) % hop
    if pad:
        audio = torch.nn.functional.pad(audio, (0, pad))
    vae = pipe.vae
    posterior = vae.encode(audio.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = posterior.mean
    if sample:
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        latents = latents + posterior.std * noise
    return latents.transpose(1, 2).to(pipe.transformer.dtype).contiguous()


@torch.no_grad()
def context_latents(pipe, length: int, batch_size: int = 1) -> torch.Tensor:
    """text2music context `[B, T, 2C]`: the silence latent (source) next to an all-ones chunk mask."""
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    src, length = pipe.prepare_src_latents(device=device, dtype=dtype, batch_size=batch_size, latent_length=length)
    mask = pipe._build_chunk_mask(task_type="text2music", latent_length=length, batch_size=batch_size,
                                  device=device, dtype=dtype,
                                  acoustic_dim=pipe.transformer.config.audio_acoustic_hidden_dim)
    return torch.cat([src, mask], dim=-1)


def null_condition(pipe) -> torch.Tensor:
    """The learned unconditional embedding `[1, 1, H]` (CFG dropout in training, guidance at inference)."""
    return pipe.condition_encoder.null_condition_emb.detach()


# --------------------------------------------------------------------------------------------------------------
# building the tiny pipeline offline (model.source=build)
# --------------------------------------------------------------------------------------------------------------

def tokenizer_corpus(presets_dir: str | Path) -> list[str]:
    """Text the toy tokenizer is trained on: every string in presets/*.json plus the prompt-template words.

    An empty or missing presets folder is fine (the template words and digits still make a usable vocabulary).
    """
    from diffusers.pipelines.ace_step.pipeline_ace_step import SFT_GEN_PROMPT, TASK_INSTRUCTIONS

    lines: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, str):
            lines.append(obj)
        elif isinstance(obj, dict):
            for k in sorted(obj):
                lines.append(str(k))
                walk(obj[k])
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    presets = Path(presets_dir)
    files = sorted(presets.rglob("*.json")) if presets.is_dir() else []
    for f in files:
        try:
            walk(json.loads(f.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            log.warning("tokenizer corpus: skipping %s (%s)", f, e)
    if not files:
        log.warning("no preset JSON under %s: the tokenizer learns only template words and digits", presets)
    lines += [SFT_GEN_PROMPT.replace("{}", ""), *TASK_INSTRUCTIONS.values(),
              "- bpm: N/A\n- timesignature: 4\n- keyscale: A minor\n- duration: 30 seconds\n",
              "# Languages\nen\n\n# Lyric\n[Instrumental]\n[verse]\n[chorus]\n[bridge]\n[intro]\n[outro]",
              " ".join(str(i) for i in range(0, 300)), "0123456789 . , : ; - / # [ ] ( )",
              "C C# Db D D# Eb E F F# Gb G G# Ab A A# Bb B major minor"]
    return lines


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """Byte-level BPE with exactly `vocab_size` ids, wrapped as `PreTrainedTokenizerFast` (pad = eos = <|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer=trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ModelError(f"tokenizer has {tok.get_vocab_size()} ids > model.build.vocab_size={vocab_size}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                   padding_side="right", model_max_length=32768)


def build_pipeline(build_cfg: dict, variant: str, seed: int, tokenizer):
    """An `AceStepPipeline` from diffusers' classes at the sizes in `build_cfg`, seeded random weights.

    The condition encoder's `silence_latent` is set to the VAE encoding of digital silence, as in the real
    checkpoint, so text2music context and timbre behave like the real model's.
    """
    from diffusers import (AceStepConditionEncoder, AceStepPipeline, AceStepTransformer1DModel,
                           AutoencoderOobleck, FlowMatchEulerDiscreteScheduler)
    from transformers import Qwen3Config, Qwen3Model

    b = dict(build_cfg)
    latent = int(b["latent_channels"])
    if math.prod(b["vae_downsampling_ratios"]) != 1920:
        raise ConfigError(f"`model.build.vae_downsampling_ratios` = {b['vae_downsampling_ratios']}: the product "
                          "must be 1920 (25 latent frames per second at 48 kHz, as ACE-Step 1.5)")
    if variant not in VARIANTS:
        raise ConfigError(f"`model.variant` = {variant!r}: expected one of {VARIANTS}")
    shared = dict(hidden_size=b["hidden_size"], intermediate_size=b["intermediate_size"],
                  num_attention_heads=b["num_attention_heads"], num_key_value_heads=b["num_key_value_heads"],
                  head_dim=b["head_dim"], sliding_window=b["sliding_window"])

    torch.manual_seed(seed)
    vae = AutoencoderOobleck(encoder_hidden_size=2 * latent, downsampling_ratios=list(b["vae_downsampling_ratios"]),
                             channel_multiples=list(b["vae_channel_multiples"]),
                             decoder_channels=b["vae_decoder_channels"], decoder_input_channels=latent,
                             audio_channels=2, sampling_rate=SAMPLE_RATE)
    torch.manual_seed(seed + 1)
    text_cfg = Qwen3Config(vocab_size=b["vocab_size"], hidden_size=b["text_hidden_dim"],
                           intermediate_size=b["text_intermediate_size"], num_hidden_layers=b["text_encoder_layers"],
                           num_attention_heads=b["text_num_attention_heads"],
                           num_key_value_heads=b["text_num_key_value_heads"], head_dim=b["text_head_dim"],
                           max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                           tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    text_encoder = Qwen3Model(text_cfg)
    torch.manual_seed(seed + 2)
    transformer = AceStepTransformer1DModel(num_hidden_layers=b["num_hidden_layers"], in_channels=3 * latent,
                                            audio_acoustic_hidden_dim=latent, patch_size=2,
                                            is_turbo=variant == "turbo", model_version=variant, **shared)
    torch.manual_seed(seed + 3)
    cond = AceStepConditionEncoder(text_hidden_dim=b["text_hidden_dim"], timbre_hidden_dim=latent,
                                   num_lyric_encoder_hidden_layers=b["num_lyric_encoder_hidden_layers"],
                                   num_timbre_encoder_hidden_layers=b["num_timbre_encoder_hidden_layers"], **shared)
    for m in (vae, text_encoder, transformer, cond):
        m.eval()
    cond.silence_latent.copy_(encode_silence(vae, cond.silence_latent.shape[1]))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    return AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                           condition_encoder=cond, scheduler=scheduler)


@torch.no_grad()
def encode_silence(vae, frames: int, window_s: float = 4.0) -> torch.Tensor:
    """Posterior mean of `frames` latent frames of digital silence, `[1, frames, C]`.

    The encoder is a time-invariant conv stack with a finite receptive field, so on constant input its output
    is constant away from the two edges: `window_s` seconds are encoded and the stationary middle frame fills
    the rest (the same values a single encode of the whole length gives, without its memory).
    """
    hop = int(math.prod(vae.config.downsampling_ratios))
    win = min(frames, int(window_s * vae.config.sampling_rate) // hop)
    zeros = torch.zeros(1, vae.config.audio_channels, win * hop, device=vae.device, dtype=vae.dtype)
    enc = vae.encode(zeros).latent_dist.mean.transpose(1, 2)  # [1, win, C]
    if win == frames:
        return enc
    half = win // 2
    mid = enc[:, half:half + 1]
    if not torch.allclose(enc[:, half - 2:half + 3], mid.expand(-1, 5, -1), atol=1e-5, rtol=1e-4):
        raise ModelError(f"VAE encoding of silence is not stationary after {window_s / 2} s: receptive field too wide")
    head, tail = enc[:, :half], enc[:, win - half:]
    return torch.cat([head, mid.expand(-1, frames - 2 * half, -1), tail], dim=1)


# --------------------------------------------------------------------------------------------------------------
# stage base_model
# --------------------------------------------------------------------------------------------------------------

def files_record(folder: Path, exclude: Iterable[str] = (MANIFEST,)) -> dict[str, dict]:
    """`{relative path: {bytes, sha256}}` for every file under `folder` (sorted, hidden/cache files skipped)."""
    skip = set(exclude)
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        if rel in skip or any(part.startswith(".") for part in f.relative_to(folder).parts):
            continue
        out[rel] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    return out


def _fingerprint(files: dict[str, dict]) -> str:
    blob = json.dumps({k: v["sha256"] for k, v in files.items()}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _safetensors_dtypes(folder: Path) -> list[str]:
    from safetensors import safe_open

    dtypes: set[str] = set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                dtypes.add(str(st.get_slice(k).get_dtype()))
    return sorted(dtypes)


def verify_pipeline_dir(folder: str | Path, variant: str, key: str = "model.path") -> dict:
    """Check a diffusers-format ACE-Step 1.5 folder without loading weights; returns its component summary.

    Checks: `model_index.json` names `AceStepPipeline`; every component is present with its config and the
    expected class; model components have floating-point safetensors weights; the component widths agree;
    the transformer's turbo flag and an upstream folder name match `model.variant` (lofi_lora.model_variant).

    Raises:
        ConfigError: the folder does not exist. ModelError: anything else, naming `key` and the component.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"`{key}` = {folder}: no such folder (expected a diffusers-format ACE-Step 1.5 pipeline)")
    index_f = folder / "model_index.json"
    if not index_f.is_file():
        raise ModelError(f"`{key}` = {folder}: no model_index.json, so not a diffusers pipeline folder "
                         "(convert the checkpoint with diffusers' ACE-Step conversion script)")
    index = read_json(index_f)
    if index.get("_class_name") != "AceStepPipeline":
        raise ModelError(f"`{key}` = {folder}: model_index.json names {index.get('_class_name')!r}, "
                         "expected 'AceStepPipeline'")
    summary: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for name, (lib, cls) in COMPONENTS.items():
        entry = index.get(name)
        sub = folder / name
        if not entry or entry[0] is None or not sub.is_dir():
            raise ModelError(f"`{key}` = {folder}: component {name!r} is missing")
        if entry[0] not in lib or (cls and entry[1] != cls):
            raise ModelError(f"`{key}` = {folder}: component {name!r} is {entry[0]}.{entry[1]}, "
                             f"expected {lib[0]}.{cls or '*'}")
        rec: dict[str, Any] = {"class": entry[1]}
        if name == "tokenizer":
            if not ((sub / "tokenizer.json").is_file() or (sub / "tokenizer_config.json").is_file()):
                raise ModelError(f"`{key}` = {folder}: tokenizer has no tokenizer.json/tokenizer_config.json")
        else:
            cfg_f = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
            if not cfg_f.is_file():
                raise ModelError(f"`{key}` = {folder}: {name}/{cfg_f.name} is missing")
            configs[name] = read_json(cfg_f)
            if cls and configs[name].get("_class_name", cls) != cls:
                raise ModelError(f"`{key}` = {folder}: {name}/{cfg_f.name} is for "
                                 f"{configs[name].get('_class_name')!r}, expected {cls!r}")
        if name in WEIGHT_COMPONENTS:
            dtypes = _safetensors_dtypes(sub)
            if not dtypes:
                raise ModelError(f"`{key}` = {folder}: {name}/ has no .safetensors weights")
            bad = [d for d in dtypes if not re.fullmatch(r"(torch\.)?(float32|float16|bfloat16)|F32|F16|BF16", d)]
            if bad:
                raise ModelError(f"`{key}` = {folder}: {name} weights have non-float dtypes {bad} "
                                 "(quantized checkpoints cannot be trained with LoRA here)")
            rec["dtypes"] = dtypes
        summary[name] = rec

    tr, ce, vae, te = (configs[k] for k in ("transformer", "condition_encoder", "vae", "text_encoder"))
    checks = [
        ("text_encoder.hidden_size", te.get("hidden_size"), "condition_encoder.text_hidden_dim",
         ce.get("text_hidden_dim")),
        ("vae.decoder_input_channels", vae.get("decoder_input_channels"), "transformer.audio_acoustic_hidden_dim",
         tr.get("audio_acoustic_hidden_dim")),
        ("condition_encoder.hidden_size", ce.get("hidden_size"), "transformer.encoder_hidden_size",
         tr.get("encoder_hidden_size") or tr.get("hidden_size")),
    ]
    for ka, va, kb, vb in checks:
        if va is not None and vb is not None and va != vb:
            raise ModelError(f"`{key}` = {folder}: {ka}={va} does not match {kb}={vb}")
    if vae.get("downsampling_ratios") and math.prod(vae["downsampling_ratios"]) * 25 != vae.get("sampling_rate"):
        raise ModelError(f"`{key}` = {folder}: the VAE does not give 25 latent frames per second "
                         f"({vae.get('sampling_rate')} Hz / {math.prod(vae['downsampling_ratios'])})")
    for warning in check_variant(variant, tr, folder):  # model_version alone (upstream defaults it) only warns
        log.warning(warning)
    return summary


def _resolve_weights(model_cfg) -> tuple[Path, dict]:
    """The folder of a real model (local path or pinned hub snapshot) and the manifest fields naming it."""
    source = str(require(model_cfg, "source"))
    if source == "native":  # upstream's checkpoints/ layout, converted once into a cache next to it
        from lofi_lora.native_checkpoint import converted_pipeline

        path, record = converted_pipeline(str(require(model_cfg, "path")), model_cfg.get("native_dir"),
                                          model_cfg.get("converted_dir"))
        return path, {"weights_dir": str(path), "native_root": record["root"],
                      "native_dir": record["variant_dir"], "native_key": record["key"]}
    if source in ("local", "diffusers"):
        path = Path(str(require(model_cfg, "path"))).expanduser().resolve()
        return path, {"weights_dir": str(path)}
    if source == "hub":
        hub_id = str(require(model_cfg, "hub_id"))
        revision = model_cfg.get("revision")
        if not revision:
            raise ConfigError("`model.revision` is required with model.source=hub: pin a commit of "
                              f"{hub_id} (`-S model.revision=<sha>`)")
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(repo_id=hub_id, revision=str(revision)))
        except Exception as e:  # offline, unknown repo or revision
            raise ModelError(f"`model.hub_id` = {hub_id} at `model.revision` = {revision}: cannot fetch ({e})") from e
        return path, {"weights_dir": str(path), "hub_id": hub_id, "revision": str(revision)}
    raise ConfigError(f"`model.source` = {source!r}: expected build, diffusers (or local), native or hub")


def write_base_model(cfg) -> dict:
    """Stage base_model: build + save the tiny pipeline, or verify a real one and fingerprint it (no copy)."""
    model_cfg = cfg.model
    out = Path(str(require(cfg, "paths.base_model")))
    source = str(require(model_cfg, "source"))
    variant = str(require(model_cfg, "variant"))
    t0 = time.perf_counter()
    manifest: dict[str, Any] = {"version": 1, "name": str(require(model_cfg, "name")), "source": source,
                                "variant": variant, "weights_dir": None}
    if source == "build":
        build = to_plain(require(model_cfg, "build"))
        seed = int(cfg.get("seed", 0))
        tokenizer = train_tokenizer(tokenizer_corpus(str(require(cfg, "paths.presets"))), int(build["vocab_size"]))
        pipe = build_pipeline(build, variant, seed, tokenizer)
        with atomic_dir(out) as tmp:
            pipe.save_pretrained(str(tmp), safe_serialization=True)
            components = verify_pipeline_dir(tmp, variant, key="paths.base_model")
            files = files_record(tmp)
            manifest.update(seed=seed, build=build, components=components, files=files, fingerprint=_fingerprint(files))
            atomic_write_json(tmp / MANIFEST, manifest)
        params = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in WEIGHT_COMPONENTS}
    else:
        folder, fields = _resolve_weights(model_cfg)
        key = "model.hub_id" if source == "hub" else "model.path"
        components = verify_pipeline_dir(folder, variant, key=key)
        if (warning := lofi_lora.ace_step_xl.stock_xl_warning(folder)):
            log.warning(warning)
        files = files_record(folder)
        manifest.update(fields, components=components, files=files, fingerprint=_fingerprint(files))
        with atomic_dir(out) as tmp:
            atomic_write_json(tmp / MANIFEST, manifest)
        params = {}
    size = sum(r["bytes"] for r in manifest["files"].values())
    seconds = time.perf_counter() - t0
    log.info("base model %s (%s): %d files, %.1f MB, fingerprint %s, %.1f s", manifest["name"], source,
             len(manifest["files"]), size / 1e6, manifest["fingerprint"][:12], seconds)
    return {"source": source, "files": len(manifest["files"]), "mbytes": round(size / 1e6, 3),
            "params": sum(params.values()) or None, "fingerprint": manifest["fingerprint"][:16],
            "seconds": round(seconds, 2)}
