"""The gateway runtime: milter, quarantine store, release, overrides, reload, metrics (no pandas/duckdb)."""
