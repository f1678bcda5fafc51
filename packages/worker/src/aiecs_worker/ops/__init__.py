"""Layer 0, operations: metrics, logs, redaction, background failures, the metrics
endpoint, the model policy and tracing. Imports only the settings (see docs/architecture.md)."""
