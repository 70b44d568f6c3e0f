"""Deterministic procedural lofi corpus (the embedded default data): numpy/scipy synthesis, no samples."""
from lofi_lora.synth.render import TrackSpec, render_track

__all__ = ["TrackSpec", "render_track", "generate_corpus"]


def __getattr__(name):  # corpus pulls in audio I/O; keep `render_track` importable on its own
    if name == "generate_corpus":
        from lofi_lora.synth.corpus import generate_corpus

        return generate_corpus
    raise AttributeError(name)
