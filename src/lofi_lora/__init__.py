"""lofi-lora: a DVC + Hydra pipeline that turns licensed music into an ACE-Step 1.5 LoRA."""
__version__ = "0.1.0"
