"""Stage `dataset`: the HF dataset and the cache of latents and conditions that train and evaluate read."""
