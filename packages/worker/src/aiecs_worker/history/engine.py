"""This process's engine of the history database (AIECS_DATABASE_URL), created on first
use with the schema brought up to date; a clear error when the ``history`` extra is not
installed."""

from __future__ import annotations

import threading
from typing import Any

from aiecs_core import ConfigurationError

from ..settings import get_settings

__all__ = ["HistoryUnavailableError", "engine", "require_history"]

_lock = threading.Lock()
_engines: dict[str, Any] = {}


class HistoryUnavailableError(ConfigurationError):
    """The history database's package (``aiecs-history``) is not installed here."""


def require_history(what: str = "templates") -> None:
    """Raise HistoryUnavailableError naming the extra unless aiecs_history is installed."""
    try:
        import aiecs_history  # noqa: F401
    except ImportError:
        raise HistoryUnavailableError(
            f"{what} need the history database, which this install lacks: "
            "pip install 'aiecs-worker[history]' (the [server] extra includes it)",
            extra="history") from None


def engine() -> Any:
    """The engine of AIECS_DATABASE_URL (one per URL per process), migrated to the newest
    schema on first use."""
    url = get_settings().database_url
    eng = _engines.get(url)
    if eng is not None:
        return eng
    require_history()
    from aiecs_history import db

    with _lock:
        eng = _engines.get(url)
        if eng is None:
            eng = db.connect(url)
            db.upgrade(eng)
            _engines[url] = eng
    return eng


def dispose() -> None:
    """Close every engine (tests; a forked child must not share its parent's sockets)."""
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()
