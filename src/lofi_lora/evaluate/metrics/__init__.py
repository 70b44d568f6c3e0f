"""Evaluation metrics: Fréchet distances (fad), embedding back-ends (embeddings) and the CLAP score (clap)."""
