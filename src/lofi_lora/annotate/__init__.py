"""Stage `annotate`: per-clip BPM, key, events and preset captions as ACE-Step 1.5 sidecars."""
