"""The ACE-Step 1.5 model: variants, loading, encoding, the tiny model, native conversion, stage `base_model`."""
