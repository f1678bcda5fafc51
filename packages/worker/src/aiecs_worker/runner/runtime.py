"""The runner: one event loop per worker process, executing operations.

Celery's pool threads (or the prefork child's main thread) hand each task to
:meth:`Runtime.run`, which schedules the execution on the process's event loop thread and
waits for its outcome. All provider calls of a process share that loop and the service
instances (and their HTTP clients) on it, so one process keeps hundreds of calls in flight
under the threads pool, and a prefork child never calls ``asyncio.run`` per task.

One execution:

1. the raw task arguments are validated into a :class:`TaskRequest` (size limit first);
2. the ``begin`` transition, which publishes RUNNING in the same Lua call: an execution
   already terminal is not run again (its stored outcome is returned), one held by a
   live worker, or being executed by this very process, is a duplicate delivery
   (dropped, see :mod:`aiecs_worker.store.lease`);
   deliveries are counted, and past ``AIECS_MAX_DELIVERIES`` the execution FAILS
   instead of running; a pending cancel request ends it CANCELLED;
3. the declared operation is resolved and its input validated;
4. the operation runs under the deadline (``CELERY_TASK_SOFT_TIME_LIMIT``), retrying
   retryable provider errors with backoff and Retry-After while time remains and nothing
   has been streamed yet; a cancel request cancels it;
5. the ``finish`` transition stores the outcome and, if it won, publishes the single
   terminal event; the execution's slot in its user's fair-share window is then free,
   and that user's next held executions are sent (see :mod:`aiecs_worker.store.hold`).

This module holds the loop, the entry point from Celery and the shutdown; the parts are
mixed into :class:`Runtime`: one execution (:mod:`.execution`), cancellation
(:mod:`.cancels`), the lease and sweeper (:mod:`.sweeper`), and what they share
(:mod:`.context`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
from typing import Any

from aiecs_core import ServiceRegistry, TaskEvent, load_plugins
from celery.exceptions import SoftTimeLimitExceeded

from ..settings import Settings, get_settings
from ..store.connection import PubSubNodes, async_client, cluster_addresses
from ..store.events import BEGIN_PUBLISH_LUA, RedisEventPublisher
from ..store.hold import ADMIT_LUA, CLAIM_DUE_LUA, KEEP_ALIVE_LUA, RELEASE_LUA
from ..store.keys import SHARD_PREFIXES, owners_key
from ..store.lease import HEARTBEAT_LUA, REAP_LUA, SWEEP_LUA, make_owner
from ..store.scripts import Coalesced
from .cancels import CancelsMixin
from .context import Outcome, StateUnavailableError, WorkerContext, _Running, sleep_at_least
from .execution import ExecutionMixin
from .ratelimit import RateLimiter
from .sweeper import SweeperMixin

__all__ = ["Outcome", "Runtime", "StateUnavailableError", "WorkerContext", "close_runtime",
           "get_runtime", "sleep_at_least"]

log = logging.getLogger("aiecs.worker")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """The worker's loop: uvloop's when it is installed (it comes with uvicorn[standard]),
    asyncio's otherwise. uvloop runs the loop's own work (readiness, handles, the
    cross-thread wake-ups of every submitted execution) in C: about 10 % less CPU per
    no-op execution in the runtime, measured."""
    try:
        import uvloop  # optional (uvicorn[standard]): here, where its absence is handled
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Runtime(ExecutionMixin, CancelsMixin, SweeperMixin):
    """Per-process state: the loop thread, the registry, Redis clients, running executions."""

    def __init__(self, settings: Settings | None = None, registry: ServiceRegistry | None = None):
        self.settings = settings or get_settings()
        self.registry = registry or load_plugins()
        self.pid = os.getpid()
        self.loop = _new_event_loop()
        self.loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="aiecs-op")
        )
        self._thread = threading.Thread(
            target=self._run_loop, name="aiecs-loop", daemon=True
        )
        s = self.settings
        state = s.redis_target(s.state_redis_url)
        self.publisher = RedisEventPublisher(
            state,
            channel=s.aiecs_socketio_channel,
            maxlen=s.aiecs_events_maxlen,
            ttl=s.aiecs_events_ttl,
        )
        self.redis = async_client(
            state, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        # The cancel listener's Redis: AIECS_PUBSUB_URL's, else the state's; on a Redis
        # Cluster, one node at a time, the next one when it fails (see _cancel_pubsub).
        pubsub = s.redis_target(s.pubsub_redis_url)
        self._pubsub_options = {"socket_connect_timeout": 2, "socket_timeout": 5,
                                "health_check_interval": 30}
        self._pubsub_nodes = PubSubNodes(pubsub, lambda: cluster_addresses(self.redis)) \
            if pubsub.cluster else None
        self.pubsub_redis = None if pubsub.cluster else (
            self.redis if pubsub == state else async_client(pubsub, **self._pubsub_options))
        #: the begin transition: the begins of executions started in the same turn of the
        #: loop (a batch of claimed messages) in one pipeline, one round trip
        self._begin = Coalesced(self.redis, BEGIN_PUBLISH_LUA)
        self._heartbeat = self.redis.register_script(HEARTBEAT_LUA)
        self._sweep = self.redis.register_script(SWEEP_LUA)
        self._reap = self.redis.register_script(REAP_LUA)
        self._admit = self.redis.register_script(ADMIT_LUA)
        self._claim_due = self.redis.register_script(CLAIM_DUE_LUA)
        self._release = self.redis.register_script(RELEASE_LUA)
        self._keep_alive = self.redis.register_script(KEEP_ALIVE_LUA)
        #: this process as the owner of the executions it runs (see aiecs_worker.store.lease)
        self.owner = make_owner()
        #: the state key of the crash suspect this process runs in isolation, if any
        self._suspect: str | None = None
        self._soft_limit_hooked = False
        #: Cluster-wide per-(provider, model) limits (AIECS_RATE_LIMITS); None when unset.
        self.limiter = RateLimiter.from_env(self.redis)
        self.running: dict[str, _Running] = {}
        #: state keys of the executions this process has begun and not yet finished: a
        #: second delivery of one of them (the broker requeued a message whose ack was
        #: lost with its connection) is a duplicate, whatever Redis says of the holder
        self._executing: set[str] = set()
        self._state_down = False
        self._thread.start()
        self._cancel_listener = asyncio.run_coroutine_threadsafe(self._listen_cancels(), self.loop)
        self._lease_keeper = asyncio.run_coroutine_threadsafe(self._keep_lease(), self.loop)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    # -- entry point from Celery ------------------------------------------------------------
    def run(
        self,
        args: tuple | list,
        kwargs: dict[str, Any],
        *,
        celery_id: str | None,
        soft_limit: float | None = None,
        task: str = "",
        queue: str = "",
    ) -> Outcome:
        """Execute one task and wait for its outcome (called from a pool thread)."""
        if not self._soft_limit_hooked:
            self._hook_soft_limit()
        future = asyncio.run_coroutine_threadsafe(
            self.execute(args, kwargs, celery_id=celery_id, soft_limit=soft_limit,
                         task=task, queue=queue),
            self.loop,
        )
        try:
            return future.result()
        except SoftTimeLimitExceeded:
            # Celery's soft time limit (prefork) fired before our own deadline: the same
            # TIMED_OUT outcome as when ours fires first, whichever wins the race.
            self._stop_running(celery_id, "timeout")
            return future.result(timeout=self.settings.aiecs_redis_wait + 10)
        except BaseException:
            # a shutdown interrupted the wait: stop the execution, let it record, re-raise
            self._stop_running(celery_id, "timeout")
            with contextlib.suppress(BaseException):
                future.result(timeout=5)
            raise

    def _hook_soft_limit(self) -> None:
        """Under prefork, Celery's soft time limit is a signal (SIGUSR1) whose handler
        raises SoftTimeLimitExceeded wherever the child happens to be, even in Celery's
        own code after the task returned. In the child's main thread, replace it by one
        that stops this process's running execution, so the runner records TIMED_OUT
        whichever limit fires first."""
        self._soft_limit_hooked = True
        if threading.current_thread() is not threading.main_thread():
            return
        try:  # billiard's prefork pool: optional here (another pool may be in use)
            from billiard.pool import SIG_SOFT_TIMEOUT, soft_timeout_sighandler
        except ImportError:  # pragma: no cover
            return
        if SIG_SOFT_TIMEOUT and signal.getsignal(SIG_SOFT_TIMEOUT) is soft_timeout_sighandler:
            signal.signal(SIG_SOFT_TIMEOUT, self._on_soft_limit)

    def _on_soft_limit(self, signum: int, frame: Any) -> None:
        for celery_id in list(self.running):
            self._stop_running(celery_id, "timeout")

    def _stop_running(self, celery_id: str | None, reason: str) -> None:
        running = self.running.get(celery_id or "")
        if running is not None:
            self.loop.call_soon_threadsafe(self._cancel, running, reason)

    def publish_nowait(self, event: TaskEvent) -> None:
        """Queue an event from any thread."""
        if threading.get_ident() == self._thread.ident:
            self.publisher.publish_nowait(event)
        else:
            self.loop.call_soon_threadsafe(self.publisher.publish_nowait, event)

    def call(self, coro, timeout: float | None = 30) -> Any:
        """Run a coroutine on the loop from another thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- shutdown -----------------------------------------------------------------------------
    async def _aclose(self) -> None:
        self._cancel_listener.cancel()
        self._lease_keeper.cancel()
        with contextlib.suppress(Exception):
            for shard in SHARD_PREFIXES:
                await self.redis.zrem(owners_key(shard), self.owner)
        for instance in self.registry.drop_instances():
            try:
                await instance.aclose()
            except Exception:  # noqa: BLE001
                log.exception("closing %r failed", instance)
        await self.publisher.aclose()
        await self.redis.aclose()
        if self.pubsub_redis is not None and self.pubsub_redis is not self.redis:
            await self.pubsub_redis.aclose()

    def close(self, timeout: float = 10) -> None:
        if os.getpid() != self.pid or not self.loop.is_running():
            return
        try:
            self.call(self._aclose(), timeout)
        except Exception:  # noqa: BLE001
            log.exception("runtime shutdown failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime, created on first use (and anew in a forked child)."""
    global _runtime
    rt = _runtime
    if rt is None or rt.pid != os.getpid():
        with _runtime_lock:
            rt = _runtime
            if rt is None or rt.pid != os.getpid():
                rt = Runtime()
                _runtime = rt
    return rt


def close_runtime() -> None:
    global _runtime
    with _runtime_lock:
        rt, _runtime = _runtime, None
    if rt is not None:
        rt.close()
