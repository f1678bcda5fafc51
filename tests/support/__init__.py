"""Shared test helpers (processes, ports, servers)."""
