"""Gateway runtime: milter, quarantine store, release, overrides, digests (no pandas/duckdb)."""
