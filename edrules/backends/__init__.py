"""Rule backends: one semantics (docs/rules.md), two targets: DuckDB SQL and in-memory runtime."""
