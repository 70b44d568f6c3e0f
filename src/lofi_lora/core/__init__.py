"""Configuration, its schema, errors, atomic files, runtime and the stage metrics layout: imported by every package."""
