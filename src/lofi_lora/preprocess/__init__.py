"""Stage `preprocess`: 48 kHz stereo clips, quality checks, loudness."""
