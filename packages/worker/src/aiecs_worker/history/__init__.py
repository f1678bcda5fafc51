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

from aiecs_core import AiecsError, ConfigurationError

__all__ = ["MISSING_EXTRA", "HistoryDatabaseUnreachableError", "HistoryUnavailableError",
           "require"]

#: What to install for the history database (one message, every place that needs it).
MISSING_EXTRA = ("the history database needs the aiecs-history package: "
                 "pip install 'aiecs-worker[history]' (the [server] extra includes it)")


class HistoryUnavailableError(ConfigurationError):
    """The history database's package (``aiecs-history``) is not installed here."""


class HistoryDatabaseUnreachableError(AiecsError):
    """The history database did not answer (refused, or no answer within
    AIECS_DATABASE_TIMEOUT): a template could not be resolved; nothing was queued."""


def require(what: str = "") -> ModuleType:
    """``aiecs_history``, or HistoryUnavailableError saying which extra installs it
    (``what``: what needed it, e.g. ``templates``)."""
    try:
        import aiecs_history  # deferred: only the recorder, the server, templates need it
    except ImportError:
        raise HistoryUnavailableError((f"{what}: " if what else "") + MISSING_EXTRA,
                                      extra="history") from None
    return aiecs_history
