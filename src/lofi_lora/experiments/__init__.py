"""Sweeps and multirun jobs over the whole chain."""
