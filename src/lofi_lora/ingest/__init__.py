"""Stage `ingest`: licence/provenance gate, duplicate detection, quarantine."""
