"""Stage `export`: merged LoRA -> ONNX FP32/FP16/INT8/INT4 with parity gates, and an ONNX-only sampler.

Import the submodules directly. `sampler` and `parity` must stay importable without torch (the ONNX-only
process never loads it), so this package file imports nothing.
"""
