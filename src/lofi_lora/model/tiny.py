"""The tiny ACE-Step 1.5 pipeline built offline from diffusers' own classes (`model.source=build`), with a toy
tokenizer trained on the presets' words: the embedded default that runs the whole chain on a CPU.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from lofi_lora.core.errors import ConfigError, ModelError
from lofi_lora.model.encode import SAMPLE_RATE, encode_silence
from lofi_lora.model.variants import variant as variant_row

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"


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

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer=trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ModelError(f"tokenizer has {tok.get_vocab_size()} ids > model.build.vocab_size={vocab_size}")
    return _wrap(tokenizer_object=tok)


def load_tokenizer(path: str | Path):
    """A tokenizer that `train_tokenizer` made and saved (tokenizer.json), wrapped the same way."""
    return _wrap(tokenizer_file=str(path))


def _wrap(**source):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(**source, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, padding_side="right",
                                   model_max_length=32768)


def _shared_sizes(b) -> dict:
    """The sizes the DiT and the condition encoder share."""
    return dict(hidden_size=b["hidden_size"], intermediate_size=b["intermediate_size"],
                num_attention_heads=b["num_attention_heads"], num_key_value_heads=b["num_key_value_heads"],
                head_dim=b["head_dim"], sliding_window=b["sliding_window"])


def build_transformer(build_cfg, variant: str):
    """The DiT (`AceStepTransformer1DModel`) at the sizes in `build_cfg`, random weights from torch's current seed.

    The one definition of the tiny DiT: `build_pipeline` uses it, and so do the tests that need only a DiT.
    """
    from diffusers import AceStepTransformer1DModel

    latent = int(build_cfg["latent_channels"])
    return AceStepTransformer1DModel(num_hidden_layers=build_cfg["num_hidden_layers"], in_channels=3 * latent,
                                     audio_acoustic_hidden_dim=latent, patch_size=2,
                                     is_turbo=variant_row(variant).turbo, model_version=variant,
                                     **_shared_sizes(build_cfg))


def build_pipeline(build_cfg: dict, variant: str, seed: int, tokenizer):
    """An `AceStepPipeline` from diffusers' classes at the sizes in `build_cfg`, seeded random weights.

    The condition encoder's `silence_latent` is set to the VAE encoding of digital silence, as in the real
    checkpoint, so text2music context and timbre behave like the real model's.
    """
    from diffusers import AceStepConditionEncoder, AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3Config, Qwen3Model

    b = dict(build_cfg)
    latent = int(b["latent_channels"])
    if math.prod(b["vae_downsampling_ratios"]) != 1920:
        raise ConfigError(f"`model.build.vae_downsampling_ratios` = {b['vae_downsampling_ratios']}: the product "
                          "must be 1920 (25 latent frames per second at 48 kHz, as ACE-Step 1.5)")
    shared = _shared_sizes(b)

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
    transformer = build_transformer(b, variant)
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
