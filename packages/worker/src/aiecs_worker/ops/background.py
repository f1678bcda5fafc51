"""Failures of background loops that retry: visible at WARNING, rate-limited, and counted.

A loop that runs unattended (the lease renewal and sweep, the workflow sweeper, a step's
release) retries what failed, often every second or faster. Logging each failure would
flood the log; logging them at DEBUG hid a step retried forever. So each failure counts in
``aiecs_background_failures_total{kind}`` and is logged at WARNING at most once per
:data:`INTERVAL` seconds per kind, that line saying how many were left unlogged since the
last one.
"""

from __future__ import annotations

import logging
import threading
import time

from . import metrics

__all__ = ["INTERVAL", "failed"]

#: Seconds between two WARNING lines of one kind.
INTERVAL = 60.0

log = logging.getLogger("aiecs.background")
_lock = threading.Lock()
#: kind -> (monotonic time of its last line, failures not logged since)
_last: dict[str, tuple[float, int]] = {}


def failed(kind: str, what: str, exc: BaseException | str) -> None:
    """One failure of background loop ``kind`` (a fixed name: it is a metric label) while
    doing ``what``; logged unless a line of this kind was logged under INTERVAL ago."""
    metrics.background_failure(kind)
    now = time.monotonic()
    with _lock:
        last = _last.get(kind)
        if last is not None and now - last[0] < INTERVAL:
            _last[kind] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last is not None else 0
        _last[kind] = (now, 0)
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    more = (f" ({suppressed} more {kind} failures since the last report)"
            if suppressed else "")
    log.warning("background %s failed: %s: %s%s; retrying (at most one line per %ds)",
                kind, what, reason, more, INTERVAL)
