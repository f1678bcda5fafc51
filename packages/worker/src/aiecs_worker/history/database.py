"""The server's one connection to the history database: opened once from
``get_settings().database_url``, migrated at start, every query bounded in time.

The database is read in threads of its own (not Starlette's shared pool, which the task
API needs for Redis): a database that hangs (a paused PostgreSQL answers nothing, not even
an error) can hold at most :data:`THREADS` threads, and every call returns or fails with
:class:`DatabaseUnavailable` within AIECS_DATABASE_TIMEOUT seconds, never hangs the
request. The server starts and serves tasks while the database is down; the migrations
are applied at start and, if the database was unreachable then, at the next query.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import MISSING_EXTRA

__all__ = ["THREADS", "DatabaseUnavailable", "HistoryDatabase", "missing_extra"]

log = logging.getLogger("aiecs.history")

#: Threads that query the database (at most this many requests wait on it at once).
THREADS = 8

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The history database did not answer (in time): ``reason`` says what happened."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def missing_extra() -> str:
    return MISSING_EXTRA


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason: the driver's first line (never the URL)."""
    from aiecs_core import redact

    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"{type(orig).__name__}: {redact(text)[:200]}"


class HistoryDatabase:
    """The engine of ``url``, created on first use, with calls bounded by ``timeout``."""

    def __init__(self, url: str, *, timeout: float = 10.0, threads: int = THREADS):
        self.url = url
        self.timeout = timeout
        self._engine: Any = None
        self._migrated = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="aiecs-db")

    def _make_engine(self) -> Any:
        try:
            from aiecs_history import db  # deferred: a worker-only install has no history
        except ImportError:
            raise DatabaseUnavailable(missing_extra()) from None
        t = max(1, int(self.timeout))
        try:
            if self.url.startswith("sqlite"):
                return db.connect(self.url, connect_args={"timeout": self.timeout})
            return db.connect(self.url, pool_timeout=self.timeout, pool_size=THREADS,
                              max_overflow=0, connect_args={
                                  "connect_timeout": t,
                                  "options": f"-c statement_timeout={int(self.timeout * 1000)}"})
        except OSError as exc:  # SQLite: the database's folder cannot be made
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from None

    def engine(self) -> Any:
        """The engine, migrated to the newest schema (blocking: call it in a thread)."""
        with self._lock:
            if self._engine is None:
                self._engine = self._make_engine()
            if not self._migrated:
                from aiecs_history import db

                db.upgrade(self._engine)
                self._migrated = True
            return self._engine

    def run_sync(self, work: Callable[[Any], T]) -> T:
        """``work(engine)`` here (a thread), an outage as DatabaseUnavailable."""
        from sqlalchemy.exc import InterfaceError, OperationalError
        from sqlalchemy.exc import TimeoutError as PoolTimeout

        try:
            return work(self.engine())
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            raise DatabaseUnavailable(_reason(exc)) from None

    async def run(self, work: Callable[[Any], T]) -> T:
        """``work(engine)`` in a database thread, within ``timeout`` seconds (else
        DatabaseUnavailable; a thread stuck on a hung database is abandoned, not waited
        for)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self.run_sync, work)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            future.add_done_callback(_consume)
            raise DatabaseUnavailable(
                f"no answer within {self.timeout:g} s (AIECS_DATABASE_TIMEOUT)") from None

    async def start(self) -> None:
        """Migrate now, in the background of the start-up; a database that is down is
        logged and tried again at the first query."""
        try:
            await self.run(lambda engine: None)
        except DatabaseUnavailable as exc:
            log.warning("history database unavailable at start (tried again at the first "
                        "query): %s", exc.reason)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._engine is not None:
            self._engine.dispose()


def _consume(future: Any) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" warning
