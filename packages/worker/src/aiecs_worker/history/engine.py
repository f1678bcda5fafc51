"""This process's engine of the history database (AIECS_DATABASE_URL), created on first
use with the schema brought up to date; a clear error when the ``history`` extra is not
installed."""

from __future__ import annotations

import threading
from typing import Any

from ..settings import get_settings
from . import HistoryUnavailableError, require

__all__ = ["HistoryUnavailableError", "engine", "require_history"]

_lock = threading.Lock()
_engines: dict[str, Any] = {}


def require_history(what: str = "templates") -> None:
    """Raise HistoryUnavailableError naming the extra unless aiecs_history is installed."""
    require(what)


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
    from .templates import clear_cache

    clear_cache()  # the versions kept were read from these databases
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()
