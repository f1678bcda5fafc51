"""Layer 0, operations: metrics, logs, redaction, background failures, the metrics
endpoint and the model policy. Imports only the settings (see docs/architecture.md)."""
