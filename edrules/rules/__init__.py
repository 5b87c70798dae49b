"""Rules: the typed policy model, YAML parsing, and compiled rule packs."""
