"""This process's engine of the history database (AIECS_DATABASE_URL), created on first
use with the schema brought up to date; a clear error when the ``history`` extra is not
installed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from ..settings import get_settings
from . import HistoryDatabaseUnreachableError, HistoryUnavailableError, require

__all__ = ["HistoryDatabaseUnreachableError", "HistoryUnavailableError", "bounded", "engine",
           "require_history"]

T = TypeVar("T")
#: Threads that may wait on the database at once (a hung one is abandoned, not waited for).
_THREADS = 4
_pool: ThreadPoolExecutor | None = None
#: Called by dispose(): caches of what was read from the databases.
_on_dispose: list[Callable[[], None]] = []

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
            timeout = get_settings().aiecs_database_timeout
            if url.startswith("sqlite"):
                eng = db.connect(url, connect_args={"timeout": timeout})
            else:
                eng = db.connect(url, pool_timeout=timeout, connect_args={
                    "connect_timeout": max(1, int(timeout)),
                    "options": f"-c statement_timeout={int(timeout * 1000)}"})
            db.upgrade(eng)
            _engines[url] = eng
    return eng


def bounded(work: Callable[[Any], T], what: str) -> T:
    """``work(engine())`` within AIECS_DATABASE_TIMEOUT seconds: an unreachable or hung
    database raises HistoryDatabaseUnreachableError naming ``what`` and the reason (a
    paused PostgreSQL answers nothing, not even an error: the thread waiting on it is
    abandoned)."""
    global _pool
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    timeout = get_settings().aiecs_database_timeout
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="aiecs-db")
        pool = _pool
    future = pool.submit(lambda: work(engine()))
    try:
        return future.result(timeout)
    except FutureTimeout:
        future.add_done_callback(_consume)
        raise HistoryDatabaseUnreachableError(
            f"{what}: the history database did not answer within {timeout:g} s "
            "(AIECS_DATABASE_TIMEOUT)") from None
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        raise HistoryDatabaseUnreachableError(
            f"{what}: the history database is unreachable ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    from aiecs_core import redact

    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"{type(orig).__name__}: {redact(text)[:200]}"


def _consume(future: Any) -> None:
    if not future.cancelled():
        future.exception()


def dispose() -> None:
    """Close every engine (tests; a forked child must not share its parent's sockets)."""
    for forget in _on_dispose:  # what was kept from these databases (template versions)
        forget()
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()
