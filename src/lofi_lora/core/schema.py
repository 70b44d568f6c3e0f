"""The parameters every stage runs on: one dataclass per section of params.yaml, with each key's type and domain.

The values live in conf/ (composed into params.yaml, which DVC tracks); this module says which keys exist, of
which type, and in which range. No field has a value of its own, so conf/ stays the only place a value is set and
code never falls back to a default. `lofi_lora.core.config.load_config` checks a composed config against `Params`
before a stage does any work. Adding a key is one line in its section's dataclass (plus its value in conf/).

`Number` keeps YAML's own int or float (8 stays 8, not 8.0): the values are hashed into checkpoint and cache
identities, which must not change because a schema was added. Lists of numbers are `List[Any]` with a number rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from omegaconf import MISSING

Number = Union[int, float]


@dataclass(frozen=True)
class Rule:
    """A key's domain: numeric bounds and/or allowed words. Lists are checked element by element."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    number: bool = False   # for List[Any] fields of numbers (OmegaConf iterates List[Union] as nodes, not values)

    def describe(self) -> str:
        parts = [f"one of {', '.join(self.choices)}"] if self.choices else []
        lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        hi = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if lo and hi:
            parts.append(f"a number in {lo}, {hi}")
        elif lo:
            parts.append(f"a number {'>=' if self.ge is not None else '>'} {lo[1:]}")
        elif hi:
            parts.append(f"a number {'<=' if self.le is not None else '<'} {hi[:-1]}")
        elif self.number:
            parts.append("a number")
        return " or ".join(parts) + (" (a non-empty list)" if self.nonempty else "")

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return (bool(value) or not self.nonempty) and all(self.accepts(v) for v in value)
        if self.number and (isinstance(value, (bool, str)) or value is None):
            return False
        if value is None or isinstance(value, bool):
            return True  # the type says whether null / true / false are allowed
        if isinstance(value, str):
            return not self.choices or value in self.choices
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def key(**rule: Any) -> Any:
    """A field with no value of its own (conf/ sets it) and, optionally, its domain."""
    return field(default=MISSING, metadata={"rule": Rule(**rule)} if rule else {})


def section() -> Any:
    return field(default=MISSING)


UNIT = dict(ge=0, le=1)          # a ratio
PROBABILITY = dict(ge=0, lt=1)   # a rate that must leave something (dropout)
WORKERS = dict(ge=0)             # processes; 0 = all CPUs where the stage allows it
# lora.target_modules: the diffusers module names the adapter writers (lofi_lora.train.adapters) can name in
# upstream ACE-Step 1.5 / ComfyUI's layout, each with that name. A LoRA on any other module could not be exported.
ADAPTER_TYPES = ("lora", "dora", "lokr")   # adapter.type; its own section (if any) is named after it
LORA_TARGETS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj",
                "gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}


@dataclass
class Paths:
    raw: str = key()
    synth: str = key()
    synth_metadata: str = key()
    interim: str = key()
    clips: str = key()
    annotations: str = key()
    annotator_cache: str = key()
    dataset: str = key()
    cache: str = key()
    base_model: str = key()
    lora: str = key()
    onnx: str = key()
    metrics: str = key()
    plots: str = key()
    reports: str = key()
    presets: str = key()


@dataclass
class Data:
    raw_dir: str = key()
    metadata_dir: str = key()


@dataclass
class Synth:
    n_tracks: int = key(ge=1)
    sample_rate: int = key(ge=8000)
    track_s: List[Any] = key(number=True, gt=0, nonempty=True)
    n_long: int = key(ge=0)
    long_s: Number = key(gt=0)
    formats: List[str] = key(choices=("wav", "flac", "mp3", "ogg"), nonempty=True)
    waltz: bool = key()
    bad_files: bool = key()
    bad_s: Number = key(gt=0)
    silent_dbfs: Number = key(le=0)
    duplicates: bool = key()
    duplicate_gain_db: Number = key()
    duplicate_trim_s: Number = key(ge=0)
    workers: int = key(**WORKERS)


@dataclass
class Ingest:
    extensions: List[str] = key(nonempty=True)
    allowed_licences: List[str] = key()
    min_s: Number = key(ge=0)
    duplicate_threshold: Number = key(gt=0, le=1)
    workers: int = key(**WORKERS)


@dataclass
class Audio:
    sample_rate: int = key(ge=8000)
    channels: int = key(ge=1, le=2)
    target_lufs: Number = key(lt=0)
    true_peak_dbfs: Number = key(le=0)
    max_clip_s: Number = key(gt=0)
    min_clip_s: Number = key(gt=0)
    beat_start_bpm: Number = key(gt=0)
    beats_per_bar: int = key(ge=1)
    max_track_s: Number = key(gt=0, le=1800)  # a part is held whole at 48 kHz: memory grows with it
    long_tracks: str = key(choices=("split", "refuse"))
    min_source_sample_rate: int = key(ge=1)
    max_clipping_ratio: Number = key(**UNIT)
    max_silence_ratio: Number = key(**UNIT)
    silence_db: Number = key(le=0)
    max_dc_offset: Number = key(**UNIT)
    min_lufs: Number = key(lt=0)
    mp3_bitrate_kbps: int = key(ge=32, le=320)
    workers: int = key(**WORKERS)
    quality_scores: str = key()


@dataclass
class AnnotateExternal:
    enabled: bool = key()
    kind: str = key(choices=("http", "openai", "command"))
    url: Optional[str] = key()
    model: Optional[str] = key()
    max_tokens: int = key(ge=1)
    command: Optional[List[str]] = key()
    token_env: str = key()
    timeout_s: Number = key(gt=0)
    retries: int = key(ge=0)
    backoff_s: Number = key(ge=0)
    prompt: Optional[str] = key()
    max_rich_chars: int = key(ge=0)


@dataclass
class Annotate:
    artist: str = key()
    timesignature: str = key()
    estimate_timesignature: bool = key()
    vocal_language: str = key()
    instrumental_lyrics: str = key()
    event_captions: bool = key()
    max_caption_chars: int = key(ge=1)
    workers: int = key(**WORKERS)
    key_profile: str = key(choices=("temperley", "krumhansl", "combined"))
    bass_weight: Number = key(ge=0)
    tempo_range: List[Any] = key(number=True, gt=0, nonempty=True)
    tracker_margin: Number = key(ge=0)
    key_change_gain: Number = key(ge=0)
    min_key_segment_s: Number = key(gt=0)
    min_event_s: Number = key(gt=0)
    novelty_threshold: Number = key(ge=0)
    audit_ngram: int = key(ge=1)
    external: AnnotateExternal = section()


@dataclass
class Dataset:
    holdout_fraction: Number = key(ge=0, lt=1)
    split_seed: int = key()
    repeat_count: int = key(ge=1)
    cache_batch_size: int = key(ge=1)
    max_text_tokens: int = key(ge=1)
    max_lyric_tokens: int = key(ge=1)
    latent_seed: int = key()


@dataclass
class ModelBuild:
    """Sizes of the tiny pipeline (model.source=build builds it; =pretrained checks the weights have them)."""

    hidden_size: int = key(ge=1)
    intermediate_size: int = key(ge=1)
    num_hidden_layers: int = key(ge=1)
    num_attention_heads: int = key(ge=1)
    num_key_value_heads: int = key(ge=1)
    head_dim: int = key(ge=1)
    sliding_window: int = key(ge=1)
    num_lyric_encoder_hidden_layers: int = key(ge=1)
    num_timbre_encoder_hidden_layers: int = key(ge=1)
    latent_channels: int = key(ge=1)
    vae_channel_multiples: List[int] = key(ge=1, nonempty=True)
    vae_downsampling_ratios: List[int] = key(ge=1, nonempty=True)
    vae_decoder_channels: int = key(ge=1)
    text_hidden_dim: int = key(ge=1)
    text_encoder_layers: int = key(ge=1)
    text_intermediate_size: int = key(ge=1)
    text_num_attention_heads: int = key(ge=1)
    text_num_key_value_heads: int = key(ge=1)
    text_head_dim: int = key(ge=1)
    vocab_size: int = key(ge=1)


@dataclass
class ModelSampling:
    """Upstream's sampling defaults of a variant (conf/model/*.yaml); null keeps the variant's built-in ones."""

    num_inference_steps: int = key(ge=1)
    shift: Number = key(gt=0)
    guidance_scale: Number = key(ge=0)


@dataclass
class Model:
    name: str = key()
    source: str = key(choices=("pretrained", "build", "native", "diffusers", "local", "hub"))  # local: old name of diffusers
    path: Optional[str] = key()
    native_dir: Optional[str] = key()       # source=native: the variant folder under `path` (checkpoints/ root)
    converted_dir: Optional[str] = key()    # source=native: where the diffusers conversion is cached
    hub_id: Optional[str] = key()
    revision: Optional[str] = key()
    variant: str = key(choices=("turbo", "sft", "base"))
    dtype: str = key(choices=("bfloat16", "float16", "float32"))
    build: Optional[ModelBuild] = section()
    sampling: Optional[ModelSampling] = section()
    train_timesteps: Optional[str] = key(choices=("discrete_turbo", "logit_normal", "uniform"))


@dataclass
class Lora:
    r: int = key(ge=1)
    alpha: Number = key(gt=0)
    rslora: bool = key()
    dropout: Number = key(**PROBABILITY)
    target_modules: List[str] = key(choices=tuple(LORA_TARGETS), nonempty=True)


@dataclass
class AdapterLokr:
    """PEFT LoKrConfig's own keys (r and alpha come from `lora`)."""

    decompose_both: bool = key()
    decompose_factor: int = key(ge=-1)
    rank_dropout: Number = key(**PROBABILITY)
    module_dropout: Number = key(**PROBABILITY)


@dataclass
class Adapter:
    """Which PEFT adapter trains on `lora.target_modules` with `lora.r`/`lora.alpha` (conf/adapter/<type>.yaml).
    A type's own keys sit in its section (`lokr`); the sections of the other types are null."""

    type: str = key(choices=ADAPTER_TYPES)
    lokr: Optional[AdapterLokr] = section()


@dataclass
class Train:
    max_steps: int = key(ge=1)
    batch_size: int = key(ge=1)
    grad_accum: int = key(ge=1)
    lr: Number = key(gt=0)
    weight_decay: Number = key(ge=0)
    betas: List[Any] = key(number=True, ge=0, lt=1, nonempty=True)
    warmup_steps: int = key(ge=0)
    schedule: str = key(choices=("cosine", "linear", "constant"))
    min_lr_ratio: Number = key(**UNIT)
    max_grad_norm: Number = key(ge=0)                              # 0 = no clipping
    precision: str = key(choices=("auto", "fp32", "bf16"))
    cpu_threads: Optional[int] = key(ge=1)
    grad_checkpointing: Union[bool, int, float] = key(**UNIT)           # share of DiT blocks recomputed
    base_weights: str = key(choices=("native", "int8", "fp8"))  # frozen DiT block weights (lofi_lora.train.base_weights)
    bucket_by_length: bool = key()
    cfg_dropout: Union[int, float, str] = key(choices=("auto",), **PROBABILITY)
    timesteps: str = key(choices=("auto", "discrete_turbo", "logit_normal", "uniform"))
    logit_mean: Number = key()
    logit_std: Number = key(gt=0)
    checkpoint_every: int = key(ge=0)                              # 0 = only at the end
    keep_last: int = key(ge=1)
    resume_from: Optional[int] = key(ge=0)
    log_every: int = key(ge=1)
    compile: Union[bool, str] = key(choices=("block", "model"))
    compile_mode: Optional[str] = key()
    activation_memory_budget: Optional[float] = key(gt=0, le=1)
    pad_multiple: int = key(ge=1)
    data_on_device: Union[bool, str] = key(choices=("auto",))
    distributed: Union[bool, str] = key(choices=("auto", "on", "off"))
    ema_decay: Number = key(ge=0, lt=1)                            # EMA of the adapter weights; 0 = off
    ema_device: str = key(choices=("device", "cpu"))               # where the EMA copy lives


@dataclass
class Eval:
    last_n: Optional[int] = key(ge=1)                              # null = every checkpoint
    num_prompts: int = key(ge=1)
    seeds: List[int] = key(nonempty=True)
    duration_s: Number = key(gt=0)
    embedding: str = key(choices=("logmel", "vggish", "clap"))
    vggish_path: Optional[str] = key()
    vggish_sha256: Optional[str] = key()                          # null = the file is not checked
    clap_path: Optional[str] = key()
    clap_min_vocab: int = key(ge=1)
    fad_inf_points: int = key(ge=2)
    val_timesteps: List[Any] = key(number=True, **UNIT, nonempty=True)
    best_metric: str = key()
    best_mode: str = key(choices=("min", "max"))
    sample: str = key(choices=("base_and_best", "all"))            # which models get samples (val_loss: every one)
    bootstrap: int = key(ge=100)                                  # replicates behind each FD/KAD interval
    interval: Number = key(gt=0, lt=1)                            # the intervals' coverage (0.95)
    report_embed_max_mb: Number = key(ge=0)
    ema: bool = key()                                              # also score each checkpoint's EMA adapter
    cpu_threads: Optional[int] = key(ge=1)                         # torch threads on CPU; null = torch default


@dataclass
class Tolerance:
    """Parity bounds of one exported model against PyTorch FP32 (null = not checked)."""

    rel_l2: Optional[float] = key(ge=0)
    max_abs_err: Optional[float] = key(ge=0)
    cosine: Optional[float] = key(ge=-1, le=1)


@dataclass
class ExportLatency:
    batch: int = key(ge=1)
    frames: int = key(ge=1)
    encoder_len: int = key(ge=1)
    repeats: int = key(ge=1)
    warmup: int = key(ge=0)


@dataclass
class ExportSampler:
    prompts: List[str] = key(nonempty=True)
    lyrics: str = key()
    duration_s: Number = key(gt=0)
    seed: int = key()


@dataclass
class ExportInt4:
    """The INT4 recipe (onnxruntime's MatMulNBitsQuantizer); `lofi_lora.export.stage` checks the combinations."""

    method: str = key(choices=("default", "rtn", "hqq", "k_quant"))
    block_size: int = key(ge=16, le=128)
    symmetric: bool = key()
    accuracy_level: Optional[int] = key(ge=0, le=4)
    exclude_modules: List[str] = key()
    keep_dtype: str = key(choices=("fp32", "fp16"))


@dataclass
class Export:
    opset: int = key(ge=7)
    precisions: List[str] = key(choices=("fp32", "fp16", "int8", "int4"), nonempty=True)
    fp16_op_block_list: List[str] = key()
    exclude_modules: List[str] = key()
    int4: ExportInt4 = section()
    parity_lengths: List[int] = key(ge=1, nonempty=True)
    parity_batch: int = key(ge=1)
    parity_encoder_len: int = key(ge=1)
    ort_threads: Optional[int] = key(ge=1)
    cpu_threads: Optional[int] = key(ge=1)  # torch threads on CPU (merge, references); null = torch default
    on_gate_failure: str = key(choices=("drop", "error"))
    audio_gate: bool = key()                # lossy precisions gated on their samples' FD (export.audio_gate)
    tolerance: Dict[str, Tolerance] = section()
    latency: ExportLatency = section()
    sampler: ExportSampler = section()


@dataclass
class Runtime:
    gpu_memory_gib: Optional[Number] = key(gt=0)   # the GPU memory PyTorch may reserve in a stage; null: the card's


@dataclass
class Params:
    """params.yaml as a whole."""

    paths: Paths = section()
    data: Data = section()
    synth: Synth = section()
    ingest: Ingest = section()
    audio: Audio = section()
    annotate: Annotate = section()
    dataset: Dataset = section()
    model: Model = section()
    lora: Lora = section()
    adapter: Adapter = section()
    train: Train = section()
    eval: Eval = section()
    export: Export = section()
    runtime: Runtime = section()
    seed: int = key()
