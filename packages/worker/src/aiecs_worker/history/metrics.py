"""The recorder's Prometheus metrics, on a registry of its own, served by
``aiecs recorder --metrics-port``.

- ``aiecs_outbox_backlog`` (gauge): entries in the outbox, i.e. finished executions not yet
  in the database (XLEN: acknowledged entries are deleted);
- ``aiecs_outbox_pending`` (gauge): of those, entries read by a recorder and not yet
  acknowledged (being written, or left by a recorder that died);
- ``aiecs_recorder_rows_total``: rows written; ``aiecs_recorder_duplicates_total``: entries
  whose row was already there (written again after a crash or a claim);
  ``aiecs_recorder_entries_total``: entries acknowledged; ``aiecs_recorder_claimed_total``:
  entries taken over from an idle recorder; ``aiecs_recorder_failures_total``: failed
  attempts to write a batch (the database unreachable), retried with backoff;
  ``aiecs_recorder_retention_removed_total{kind}``: partitions dropped + rows deleted.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RecorderMetrics"]


class RecorderMetrics:
    """The recorder's metrics (prometheus_client, a registry of their own)."""

    def __init__(self) -> None:
        # deferred: prometheus_client is only needed by the recorder process
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        r = self.registry
        self.backlog = Gauge("aiecs_outbox_backlog", "Outbox entries not yet recorded",
                             registry=r)
        self.pending = Gauge("aiecs_outbox_pending",
                             "Outbox entries read by a recorder, not yet acknowledged",
                             registry=r)
        self.rows = Counter("aiecs_recorder_rows", "History rows written", registry=r)
        self.duplicates = Counter("aiecs_recorder_duplicates",
                                  "Outbox entries whose row was already written", registry=r)
        self.entries = Counter("aiecs_recorder_entries", "Outbox entries acknowledged",
                               registry=r)
        self.claimed = Counter("aiecs_recorder_claimed",
                               "Outbox entries taken over from an idle recorder", registry=r)
        self.failures = Counter("aiecs_recorder_failures",
                                "Failed attempts to write a batch (retried)", registry=r)
        self.removed = Counter("aiecs_recorder_retention_removed",
                               "Partitions dropped and rows deleted by retention",
                               ["kind"], registry=r)

    def serve(self, port: int, host: str = "0.0.0.0") -> Any:  # noqa: S104 - scrape target
        """Serve ``/metrics`` on ``port`` from a daemon thread; the server."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
