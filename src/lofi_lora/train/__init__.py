"""Stage `train`: the LoRA, its objective, state, checkpoints and adapter files."""
