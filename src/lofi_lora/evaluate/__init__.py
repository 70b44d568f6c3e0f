"""Stage `evaluate`: samples, metrics, best checkpoint and the listening report."""
