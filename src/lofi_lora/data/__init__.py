"""Audio I/O, source metadata, presets and quality measures shared by the data stages."""
