"""Benchmarks: run each with `.venv/bin/python -m benchmarks.<name>`."""
