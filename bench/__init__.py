"""The aiecs benchmark harness: ``uv run python -m bench`` (see bench/README.md)."""
