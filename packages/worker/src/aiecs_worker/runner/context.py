"""What the runtime's parts share: an execution's outcome, its context (the
operation's handle on the runtime), the running executions, and a sleep that never
wakes early."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from aiecs_core import (
    AiecsError,
    OperationContext,
    ServiceRegistry,
    TaskEvent,
    TaskRequest,
    TaskStatus,
)

from ..settings import Settings
from ..store.events import RedisEventPublisher
from .ratelimit import RateLimiter


class _Publisher(Protocol):
    """What a context needs of the runtime (:class:`aiecs_worker.runner.runtime.Runtime`)."""

    def publish_nowait(self, event: TaskEvent) -> None: ...


__all__ = ["Outcome", "RuntimeState", "StateUnavailableError", "WorkerContext",
           "sleep_at_least"]


@dataclass
class Outcome:
    """How an execution ended, handed back to the Celery task."""

    status: TaskStatus
    result: dict[str, Any] | None = None
    error: AiecsError | None = None
    celery_id: str | None = None
    replayed: bool = False
    #: another live worker holds this execution: this delivery was a duplicate, dropped
    duplicate: bool = False
    #: the outcome is the execution's terminal record, which this delivery's Celery id
    #: names: Celery's result backend reads it there (see aiecs_worker.store.results)
    recorded: bool = False
    #: the ``after_terminal`` commands went with this delivery's terminal step
    after_terminal_sent: bool = False


class StateUnavailableError(Exception):
    """Redis did not answer within AIECS_REDIS_WAIT: the execution was not started."""


@dataclass
class _Running:
    ctx: WorkerContext
    task: asyncio.Task | None = None
    cancel_reason: str | None = None
    #: the operation is over: a cancel scheduled before it ended must not reach the task
    #: (it would interrupt the recording of the outcome)
    over: bool = False


class WorkerContext(OperationContext):
    """The context operations get in the worker: events go to the process's publisher."""

    def __init__(self, request: TaskRequest, runtime: _Publisher, *, deadline: float | None,
                 queue: str = ""):
        super().__init__(request, deadline=deadline)
        self._runtime = runtime
        self.began = time.monotonic()  # for the duration metric and log
        self.queue = queue  # the queue it was delivered from (a metrics label)
        #: (operation spec, validated input, service instance), once resolved
        self.operation: tuple[Any, Any, Any] | None = None
        #: when the operation streamed its first output (the history's first_output_at)
        self.first_output_at: float | None = None
        #: Redis commands sent right after its terminal step, in the same pipeline (the
        #: asyncio pool's acknowledgement of the message: see Runtime.execute)
        self.after_terminal: tuple[tuple[Any, ...], ...] = ()

    def emit(self, type_: str, **fields: Any) -> None:
        if type_ == "stream" and self.first_output_at is None:
            self.first_output_at = time.time()
        event = self.make_event(type_, **fields)
        self._runtime.publish_nowait(event)


async def sleep_at_least(seconds: float) -> None:
    """``asyncio.sleep`` that never ends before ``seconds`` have passed on the monotonic
    clock. uvloop's timers run on a millisecond clock read once per loop turn, so a plain
    sleep there ends up to a millisecond early (measured: 88 of 200 sleeps of about 10 ms);
    asyncio's never does."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(left + 0.001)


class RuntimeState:
    """What the runtime's parts (:mod:`.execution`, :mod:`.cancels`, :mod:`.sweeper`)
    share, set by :class:`aiecs_worker.runner.runtime.Runtime`'s ``__init__``."""

    settings: Settings
    registry: ServiceRegistry
    loop: asyncio.AbstractEventLoop
    publisher: RedisEventPublisher
    redis: aioredis.Redis
    #: the cancel listener's client (AIECS_PUBSUB_URL's, else ``redis``; on a Redis
    #: Cluster, a plain client of the node ``_pubsub_nodes`` chose)
    pubsub_redis: aioredis.Redis | None
    _pubsub_nodes: Any
    _pubsub_options: dict[str, Any]
    limiter: RateLimiter | None
    #: this process as the owner of the executions it runs (see aiecs_worker.store.lease)
    owner: str
    running: dict[str, _Running]
    _executing: set[str]
    #: the state key of the crash suspect this process runs in isolation, if any
    _suspect: str | None
    # the Lua scripts, registered on ``redis``
    _begin: Any
    _heartbeat: Any
    _sweep: Any
    _reap: Any
    _admit: Any
    _claim_due: Any
    _release: Any
    _keep_alive: Any
    #: Redis did not answer the last time (logged once per outage)
    _state_down: bool

    def publish_nowait(self, event: TaskEvent) -> None:
        """Queue an event from any thread (:class:`~aiecs_worker.runner.runtime.Runtime`)."""
        raise NotImplementedError

    async def _release_held(self) -> int:
        """Send the held executions that are due (see :mod:`.execution`)."""
        raise NotImplementedError
