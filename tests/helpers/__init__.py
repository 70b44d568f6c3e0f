"""Builders shared by the tests (imported as `helpers.<module>`; pytest puts tests/ on sys.path)."""
