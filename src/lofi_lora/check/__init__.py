"""Stage `check`: params and the raw folder checked before DVC removes any output."""
