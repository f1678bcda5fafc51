"""Example third-party aiecs provider (see plugin.py)."""
