"""Upstream's native ACE-Step checkpoints: key/shape rules and the conversion to a diffusers folder."""
