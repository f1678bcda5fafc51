"""The history layer: what writes and keeps the durable record (above store/ and app,
below server/ and cli/).

- :mod:`.rows`: an outbox entry (a finished execution's state) -> its history row, its
  compacted event log and (opt-in) its payloads;
- :mod:`.recorder`: the recorder process (``aiecs recorder``): reads the outbox in the
  consumer group ``recorders``, writes batches idempotently, acknowledges after commit;
- :mod:`.retention`: the periodic per-kind retention job, one recorder at a time;
- :mod:`.metrics`: the recorder's Prometheus metrics;
- :mod:`.database`: the server's and the CLI's handle on the database (queries with a
  deadline, on threads of their own);
- :mod:`.engine`: a producer process's engine (template resolution at submission);
- :mod:`.templates`: templates resolved once, at submission, for every producer path.

``aiecs_history`` (the database layer, the ``history`` extra) is imported by the modules
that need it only, through :func:`require`, so a worker-only install imports this package
and gets a clear error naming the extra when it tries to record.
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["require"]


def require() -> ModuleType:
    """``aiecs_history``, or an error saying which extra installs it."""
    try:
        import aiecs_history  # deferred: only the recorder and the server need the database
    except ImportError as exc:
        raise RuntimeError(
            "the history database needs the aiecs-history package: install the worker "
            "with its extra, pip install 'aiecs-worker[history]'") from exc
    return aiecs_history
