"""lofi-lora: a DVC + Hydra pipeline that turns licensed music into an ACE-Step 1.5 LoRA."""
import logging

# diffusers imports torchao when it is installed, and torchao warns at import that its C++ kernels were built for
# another torch. Nothing here uses them (train.base_weights runs on torch's own int8/fp8 ops), so only errors show.
logging.getLogger("torchao").setLevel(logging.ERROR)

__version__ = "0.1.0"
