"""Export the denoiser (one transformer call) and the VAE decoder to ONNX FP32 with torch.onnx (dynamo).

Recipe from research note onnx-export.md: `optimize=False` (the default optimizer deletes small `x + eps`
terms), then fold constants so every Linear weight is a plain initializer (quantizers skip `MatMul(x,
Transpose(W))`), drop `value_info` of initializers (stale after quantize_dynamic rewrites Gemm), external data
beyond 2 GB, and `onnx.checker` on the path so external data is checked too.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from lofi_lora.core.errors import ModelError

log = logging.getLogger(__name__)

PROTO_LIMIT_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GiB cap, with room for the graph itself


class Denoiser(torch.nn.Module):
    """One transformer call with positional tensors in and the velocity out (what the ONNX graph holds)."""

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, timestep, timestep_r, encoder_hidden_states, context_latents):
        return self.transformer(
            hidden_states=hidden_states, timestep=timestep, timestep_r=timestep_r,
            encoder_hidden_states=encoder_hidden_states, context_latents=context_latents, return_dict=False,
        )[0]


class VaeDecoder(torch.nn.Module):
    """`AutoencoderOobleck.decode(latents [B, C, T]).sample` -> audio `[B, channels, samples]`."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents).sample


def denoiser_dims(transformer: torch.nn.Module) -> dict[str, int]:
    """Channel sizes of the five denoiser inputs, read from the transformer config."""
    cfg = transformer.config
    acoustic = int(cfg.audio_acoustic_hidden_dim)
    return {
        "acoustic": acoustic,
        "context": int(cfg.in_channels) - acoustic,
        "encoder": int(cfg.encoder_hidden_size or cfg.hidden_size),
        "patch_size": int(cfg.patch_size),
    }


def denoiser_inputs(dims: Mapping[str, int], batch: int, frames: int, encoder_len: int, seed: int) -> dict[str, np.ndarray]:
    """Fixed random inputs of one shape: latents ~ N(0,1), timesteps in (0, 1] with r = t as in inference."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.05, 1.0, size=(batch,)).astype(np.float32)
    return {
        "hidden_states": rng.standard_normal((batch, frames, dims["acoustic"]), dtype=np.float32),
        "timestep": t,
        "timestep_r": t.copy(),
        "encoder_hidden_states": rng.standard_normal((batch, encoder_len, dims["encoder"]), dtype=np.float32),
        "context_latents": rng.standard_normal((batch, frames, dims["context"]), dtype=np.float32),
    }


@torch.no_grad()
def run_torch(model: torch.nn.Module, inputs: Mapping[str, np.ndarray], dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Velocity from the PyTorch transformer (adapter or merged) for numpy inputs, as float32 numpy."""
    p = next(model.parameters())
    args = [torch.from_numpy(np.asarray(inputs[k])).to(p.device, dtype) for k in
            ("hidden_states", "timestep", "timestep_r", "encoder_hidden_states", "context_latents")]
    out = Denoiser(model)(*args)
    return out.float().cpu().numpy()


def _strip_initializer_value_info(proto) -> int:
    names = {i.name for i in proto.graph.initializer}
    keep = [v for v in proto.graph.value_info if v.name not in names]
    dropped = len(proto.graph.value_info) - len(keep)
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    return dropped


KEEP_NODE_METADATA = ("pkg.torch.onnx.name_scopes",)  # module path of each node: how quantizers find exclusions


def _trim_metadata(proto) -> None:
    """Drop per-node stack traces and FX dumps (larger than a tiny model's weights); keep the module scopes."""
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key in KEEP_NODE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


def initializer_bytes(proto) -> int:
    """Bytes of all initializers (raw or external), counted without serialising the proto."""
    total = 0
    for t in proto.graph.initializer:
        ext = {e.key: e.value for e in t.external_data}
        total += int(ext["length"]) if "length" in ext else len(t.raw_data) or 4 * max(len(t.float_data), 0)
    return total


def save_onnx(proto, path: str | Path, external: bool | None = None) -> list[Path]:
    """Save `proto` at `path`; weights in `<name>.data` beside it when asked or when the model passes 2 GB.

    Returns the files written. Caller-provided folders are written whole and swapped in by the stage (atomic).
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external is None:
        external = initializer_bytes(proto) > PROTO_LIMIT_BYTES
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024, convert_attribute=False)
        return [path, data]
    onnx.save_model(proto, str(path))
    return [path]


def check_onnx(path: str | Path) -> None:
    """`onnx.checker` by path (the only form that also checks external data of > 2 GB models)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as e:
        raise ModelError(f"{path}: onnx.checker rejected the exported model: {e}") from e


def _export(module: torch.nn.Module, args: tuple, dynamic_shapes, input_names, output_names, opset: int):
    """torch.onnx.export (dynamo, optimize=False), constant folding; returns an onnx ModelProto."""
    import onnx_ir
    import onnxscript.optimizer

    t0 = time.perf_counter()
    program = torch.onnx.export(
        module, args, dynamo=True, optimize=False, opset_version=int(opset), dynamic_shapes=dynamic_shapes,
        input_names=list(input_names), output_names=list(output_names), verbose=False,
    )
    model = program.model
    onnxscript.optimizer.fold_constants(model, input_size_limit=1 << 30, output_size_limit=1 << 30)
    onnxscript.optimizer.remove_unused_nodes(model)
    proto = onnx_ir.serde.serialize_model(model)
    dropped = _strip_initializer_value_info(proto)
    _trim_metadata(proto)
    log.info("exported %s in %.1f s (%d nodes, %d initializer value_info dropped)", type(module).__name__,
             time.perf_counter() - t0, len(proto.graph.node), dropped)
    return proto


def export_denoiser(transformer: torch.nn.Module, path: str | Path, opset: int, example: Mapping[str, np.ndarray],
                    external: bool | None = None) -> list[Path]:
    """Export one denoiser call with dynamic batch, frames (even: 2 * k) and encoder length; check it."""
    from torch.export import Dim

    module = Denoiser(transformer).eval()
    p = next(transformer.parameters())
    args = tuple(torch.from_numpy(np.asarray(example[k])).to(p.device, torch.float32) for k in
                 ("hidden_states", "timestep", "timestep_r", "encoder_hidden_states", "context_latents"))
    patch = int(transformer.config.patch_size)
    if args[0].shape[1] % patch or args[0].shape[0] < 2:
        raise ModelError(f"export example needs batch >= 2 and frames divisible by {patch}, got {tuple(args[0].shape)}")
    batch, enc = Dim("batch"), Dim("encoder_len")
    frames = patch * Dim("frames_over_patch")
    shapes = {
        "hidden_states": {0: batch, 1: frames}, "timestep": {0: batch}, "timestep_r": {0: batch},
        "encoder_hidden_states": {0: batch, 1: enc}, "context_latents": {0: batch, 1: frames},
    }
    proto = _export(module, args, shapes, list(shapes), ["velocity"], opset)
    _name_axes(proto, {"hidden_states": ["batch", "frames", None], "encoder_hidden_states": ["batch", "encoder_len", None],
                       "context_latents": ["batch", "frames", None], "velocity": ["batch", "frames", None]})
    files = save_onnx(proto, path, external)
    check_onnx(path)
    return files


def export_vae_decoder(vae: torch.nn.Module, path: str | Path, opset: int, frames: int = 8) -> list[Path]:
    """Export `AutoencoderOobleck.decode` with dynamic batch and latent frames (one graph call: tiling must be off)."""
    from torch.export import Dim

    if getattr(vae, "use_tiling", False):  # the tiled decode is a Python loop over a dynamic length
        raise ValueError("export_vae_decoder: call vae.disable_tiling() first (the ONNX decoder is one pass)")
    p = next(vae.parameters())
    channels = int(vae.config.decoder_input_channels)
    z = torch.randn(2, channels, frames, generator=torch.Generator().manual_seed(0)).to(p.device, torch.float32)
    shapes = {"latents": {0: Dim("batch"), 2: Dim("frames")}}
    proto = _export(VaeDecoder(vae).eval(), (z,), shapes, ["latents"], ["audio"], opset)
    _name_axes(proto, {"latents": ["batch", None, "frames"], "audio": ["batch", None, "samples"]})
    files = save_onnx(proto, path)
    check_onnx(path)
    return files


def _name_axes(proto, names: Mapping[str, list]) -> None:
    """Give dynamic axes readable names in the graph signature (the exporter writes e.g. `2*s12`)."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for dim, name in zip(vi.type.tensor_type.shape.dim, names.get(vi.name, [])):
            if name and not dim.HasField("dim_value"):
                dim.dim_param = name
