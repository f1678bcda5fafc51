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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import random
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import aiecs_core.errors as errors
import redis.asyncio as aioredis
from aiecs_core import (
    AiecsError,
    ErrorInfo,
    InvalidTaskError,
    OperationContext,
    OperationError,
    ServiceRegistry,
    TaskCancelledError,
    TaskEvent,
    TaskRequest,
    TaskResult,
    TaskStatus,
    TaskTimeoutError,
    Usage,
    WorkerLostError,
    invoke_operation,
    load_plugins,
    validate_input,
)
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker import state as worker_state

from ..app import app
from ..ops import background, logs, metrics
from ..producer.advance import sweep_due
from ..producer.release import send_released
from ..settings import Settings, get_settings
from ..store.events import (
    BEGIN_PUBLISH_LUA,
    RedisEventPublisher,
    TaskKeys,
    celery_task_id,
    script_args,
)
from ..store.hold import (
    ADMIT_LUA,
    BACKLOG_KEY,
    CLAIM_DUE_LUA,
    KEEP_ALIVE_LUA,
    RELEASE_LUA,
    admit_args,
    decode,
    keep_alive_args,
    release_args,
)
from ..store.keys import CANCEL_CHANNEL
from ..store.lease import (
    HEARTBEAT_KEYS,
    HEARTBEAT_LUA,
    REAP_KEYS,
    REAP_LUA,
    SWEEP_KEYS,
    SWEEP_LUA,
    holder_is_dead_here,
    make_owner,
)
from ..store.records import terminal_fields
from ..store.requests import parse_request, routable_call
from ..store.state import (
    DUE_KEY,
    MESSAGE_SLOT,
    OWNERS_KEY,
    PENDING_KEY,
    SUSPECT_KEY,
    celery_index_key,
    owned_key,
    steps_key,
)
from .ratelimit import RateLimiter, limited_call

__all__ = ["Outcome", "Runtime", "get_runtime"]

log = logging.getLogger("aiecs.worker")



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

    def __init__(self, request: TaskRequest, runtime: Runtime, *, deadline: float | None):
        super().__init__(request, deadline=deadline)
        self._runtime = runtime
        self.began = time.monotonic()  # for the duration metric and log

    def emit(self, type_: str, **fields: Any) -> None:
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


class Runtime:
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
        self.publisher = RedisEventPublisher(
            s.state_redis_url,
            channel=s.aiecs_socketio_channel,
            maxlen=s.aiecs_events_maxlen,
            ttl=s.aiecs_events_ttl,
        )
        self.redis = aioredis.Redis.from_url(
            s.state_redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        self._begin = self.redis.register_script(BEGIN_PUBLISH_LUA)
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

    # -- one execution ------------------------------------------------------------------------
    async def execute(
        self,
        args: tuple | list,
        kwargs: dict[str, Any],
        *,
        celery_id: str | None,
        soft_limit: float | None = None,
        task: str = "",
        queue: str = "",
    ) -> Outcome:
        """One execution, the five steps of the module's docstring."""
        s = self.settings
        started = time.time()
        # The worker's limit caps the one in the message (set by the sender's config).
        limit = min(soft_limit or s.celery_task_soft_time_limit, s.celery_task_soft_time_limit)
        deadline = time.monotonic() + limit
        try:
            request = parse_request(args, kwargs, s.aiecs_max_payload_bytes)
        except InvalidTaskError as exc:
            return await self._rejected(args, kwargs, exc, celery_id)

        celery_id = celery_id or celery_task_id(request.user_id, request.task_id, request.step)
        keys = TaskKeys(request.user_id, request.task_id)
        state_key = keys.state(request.step)
        if state_key in self._executing:
            log.info("task %s (%s) is being executed by this process: this delivery is a "
                     "duplicate, dropped", celery_id, request.key)
            return Outcome(TaskStatus.RUNNING, celery_id=celery_id, duplicate=True)
        self._executing.add(state_key)
        try:
            return await self._execute(request, keys, celery_id, started, deadline, limit,
                                       task, queue)
        finally:
            self._executing.discard(state_key)

    async def _execute(self, request: TaskRequest, keys: TaskKeys, celery_id: str,
                       started: float, deadline: float, limit: float, task: str,
                       queue: str) -> Outcome:
        ctx = WorkerContext(request, self, deadline=deadline)
        status, deliveries, cancel_requested, suspect = await self._begin_execution(
            ctx, keys, celery_id, task, queue
        )
        if status == "duplicate":
            return Outcome(TaskStatus.RUNNING, celery_id=celery_id, duplicate=True)
        if status != TaskStatus.RUNNING.value:
            return await self._replay(request, keys, status, celery_id)
        refused = self._refusal(request, celery_id, deliveries, cancel_requested)
        if refused is not None:
            return await self._finish_with(ctx, refused[0], error=refused[1],
                                           celery_id=celery_id)

        status, error, result, attempts = await self._operate(
            ctx, celery_id, keys.state(request.step) if suspect else None, deadline, limit)
        if error is not None:
            return await self._finish_with(ctx, status, error=error, celery_id=celery_id)
        outcome = TaskResult(
            task_id=request.task_id, step=request.step, user_id=request.user_id,
            task_name=request.task_name, mode=request.mode, service=request.service,
            status=TaskStatus.COMPLETED, result=result, usage=ctx.usage, attempts=attempts,
            started_at=started, finished_at=time.time(),
        ).model_dump(mode="json")
        return await self._finish_with(
            ctx, TaskStatus.COMPLETED, result=outcome, celery_id=celery_id
        )

    async def _rejected(self, args: tuple | list, kwargs: dict[str, Any],
                        exc: InvalidTaskError, celery_id: str | None) -> Outcome:
        """Invalid arguments: FAILED with the reason, told to the user when routable."""
        log.warning("rejected task %s: %s", celery_id, exc)
        routable = routable_call(args, kwargs)
        if routable is not None:
            await self._finish_with(WorkerContext(routable, self, deadline=None),
                                    TaskStatus.FAILED, error=exc)
        return Outcome(TaskStatus.FAILED, error=exc, celery_id=celery_id)

    def _refusal(self, request: TaskRequest, celery_id: str, deliveries: int,
                 cancel_requested: bool) -> tuple[TaskStatus, AiecsError] | None:
        """Why a begun execution must not run: out of deliveries, or cancelled."""
        s = self.settings
        if deliveries > s.aiecs_max_deliveries:
            err = WorkerLostError(
                f"the worker executing this task was lost {deliveries - 1} times "
                f"(limit AIECS_MAX_DELIVERIES={s.aiecs_max_deliveries}); giving up",
                deliveries=deliveries - 1,
            )
            log.error("task %s (%s): %s", celery_id, request.key, err)
            return TaskStatus.FAILED, err
        if cancel_requested:
            return TaskStatus.CANCELLED, TaskCancelledError("task was cancelled before it started")
        return None

    async def _operate(
        self, ctx: WorkerContext, celery_id: str, suspect_key: str | None, deadline: float,
        limit: float,
    ) -> tuple[TaskStatus, AiecsError | None, Any, int]:
        """Run the operation under the deadline, cancellable: (status, error, result,
        attempts). A suspect first waits for its turn to run alone (see lease.py)."""
        request = ctx.request
        running = _Running(ctx, task=asyncio.current_task())
        self.running[celery_id] = running
        metrics.started(request.task_name)
        status, error, result, attempts = TaskStatus.COMPLETED, None, None, 0
        try:
            try:
                async with asyncio.timeout_at(self._loop_deadline(deadline)):
                    if suspect_key is not None:
                        await self._isolate(ctx, suspect_key)
                    result, attempts = await self._attempts(ctx)
            except TimeoutError:
                running.cancel_reason = running.cancel_reason or "timeout"
        except asyncio.CancelledError:
            if running.cancel_reason is None:  # not ours: the loop itself is going away
                raise
            task = asyncio.current_task()
            while task.cancelling():  # every request was ours: the execution goes on
                task.uncancel()
        except AiecsError as exc:
            status, error = TaskStatus.FAILED, exc
        except Exception as exc:  # noqa: BLE001 - a provider bug must not kill the worker
            # the traceback, for whoever fixes the bug (redacted by the log filter)
            log.error("operation %s/%s.%s raised:\n%s", request.mode, request.service,
                      request.task_name, "".join(traceback.format_exception(exc)))
            status = TaskStatus.FAILED
            error = OperationError(  # redacted when built, as every AiecsError
                f"{type(exc).__name__}: {exc}", exception_type=type(exc).__name__
            )
        finally:
            running.over = True
            self.running.pop(celery_id, None)
            metrics.stopped()

        if running.cancel_reason == "timeout":
            ctx.cancel()
            return TaskStatus.TIMED_OUT, TaskTimeoutError(
                f"deadline of {limit:g}s passed (CELERY_TASK_SOFT_TIME_LIMIT); "
                "the provider call was cancelled",
                limit=limit,
            ), None, attempts
        if running.cancel_reason is not None:
            return TaskStatus.CANCELLED, TaskCancelledError("task was cancelled"), None, attempts
        return status, error, result, attempts

    def _loop_deadline(self, monotonic_deadline: float) -> float:
        return self.loop.time() + max(0.0, monotonic_deadline - time.monotonic())

    async def _attempts(self, ctx: WorkerContext) -> tuple[Any, int]:
        request = ctx.request
        spec = self.registry.operation(request.mode, request.service, request.task_name)
        data = validate_input(spec, request.input_data)
        instance = self.registry.instance(request.mode, request.service)
        s = self.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await limited_call(
                    self.limiter, instance, spec.name, data, ctx,
                    lambda: metrics.provider_call(instance, spec.name, ctx,
                                                  invoke_operation(instance, spec, ctx, data)),
                )
                return result, attempt
            except AiecsError as exc:
                if not exc.is_retryable or attempt >= s.aiecs_max_attempts:
                    raise self._with_partial(exc, ctx) from exc.__cause__
                if ctx.has_streamed:
                    raise self._with_partial(exc, ctx) from exc.__cause__
                delay = self._backoff(attempt, exc)
                remaining = ctx.time_remaining()
                if remaining is not None and delay >= remaining:
                    raise self._with_partial(exc, ctx) from exc.__cause__
                ctx.emit(
                    "progress",
                    message=(
                        f"retrying in {delay:.2f}s after {type(exc).__name__} "
                        f"(attempt {attempt + 1} of {s.aiecs_max_attempts})"
                    ),
                )
                await sleep_at_least(delay)  # a provider's Retry-After is a floor

    def _backoff(self, attempt: int, exc: AiecsError) -> float:
        s = self.settings
        base = min(s.aiecs_retry_backoff_max, s.aiecs_retry_backoff * 2 ** (attempt - 1))
        delay = base * (0.5 + random.random() / 2)  # "equal jitter"
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, float(retry_after))
        return delay

    @staticmethod
    def _with_partial(exc: AiecsError, ctx: OperationContext) -> AiecsError:
        if ctx.has_streamed and "partial_output" not in exc.details:
            return type(exc)(exc.message, {**exc.details, "partial_output": ctx.partial_output})
        return exc

    async def _begin_execution(
        self, ctx: WorkerContext, keys: TaskKeys, celery_id: str, task: str, queue: str
    ) -> tuple[str, int, bool, bool]:
        """The ``begin`` transition: (status, deliveries, cancel requested, suspect).

        When the execution starts, the same script publishes its RUNNING event ("started",
        or "redelivered after worker loss (delivery N)"): it is in the log before the
        provider is called, even if this process is killed during the call.
        Waits for an unreachable Redis (AIECS_REDIS_WAIT), never runs without its record.
        Status ``duplicate``: another live worker holds the execution (see lease.py).
        """
        s = self.settings
        request = ctx.request
        ev_keys, ev_args = script_args(ctx.make_event("status", message=MESSAGE_SLOT),
                                       s.aiecs_socketio_channel, s.aiecs_events_maxlen,
                                       s.aiecs_events_ttl)
        keys_ = [keys.state(request.step), steps_key(request.user_id, request.task_id),
                 celery_index_key(celery_id), OWNERS_KEY, owned_key(self.owner), *ev_keys]
        args = [celery_id, s.aiecs_events_ttl, time.time(), request.user_id, request.task_name,
                request.step, s.aiecs_max_deliveries, self.owner, s.aiecs_lease_seconds * 1000,
                request.model_dump_json(), queue, task, "", *ev_args]
        force = 12  # index of the force flag in args
        give_up = time.monotonic() + s.aiecs_redis_wait
        delay = 0.05
        while True:
            try:
                status, deliveries, cancel, suspect, holder = await self._begin(
                    keys=keys_, args=args)
            except Exception as exc:  # noqa: BLE001 - Redis away: wait for it, within a bound
                self._state_unavailable(exc)
                if time.monotonic() + delay > give_up:
                    raise StateUnavailableError(
                        f"task state store unreachable for {s.aiecs_redis_wait:g}s "
                        f"(AIECS_REDIS_WAIT): {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._state_available()
            status = status.decode() if isinstance(status, bytes) else status
            if status != "busy":
                return status, int(deliveries), bool(cancel), bool(suspect)
            holder = holder.decode() if isinstance(holder, bytes) else holder
            if holder_is_dead_here(holder):
                args[force] = "1"  # its process is gone: take over now
                continue
            # A live (or not yet swept) holder: if it dies, the sweeper queues the
            # execution again from its record, so this copy is not needed.
            log.info("task %s (%s) is held by %s: this delivery is a duplicate, dropped",
                     celery_id, request.key, holder)
            return "duplicate", int(deliveries), False, False

    async def _isolate(self, ctx: WorkerContext, state_key: str) -> None:
        """Run a crash suspect alone among suspects, cluster-wide (see lease.py)."""
        lease_ms = self.settings.aiecs_lease_seconds * 1000
        told = False
        while True:
            if await self.redis.set(SUSPECT_KEY, state_key, nx=True, px=lease_ms) or (
                await self.redis.get(SUSPECT_KEY)
            ) == state_key.encode():
                self._suspect = state_key
                return
            if not told:
                ctx.emit("progress", message="waiting to re-run alone after a worker crash")
                told = True
            await asyncio.sleep(0.25)

    async def _replay(
        self, request: TaskRequest, keys: TaskKeys, status: str, celery_id: str
    ) -> Outcome:
        """An execution that already finished: hand back the stored outcome, run nothing."""
        raw = await self.redis.hmget(keys.state(request.step), ["result", "error"])
        result = json.loads(raw[0]) if raw[0] else None
        error = None
        if raw[1]:
            info = ErrorInfo.model_validate_json(raw[1])
            error = _rebuild_error(info)
        log.info("task %s (%s) already %s; not executed again", celery_id, request.key, status)
        return Outcome(TaskStatus(status), result=result, error=error, celery_id=celery_id,
                       replayed=True)

    async def _finish_with(
        self,
        ctx: OperationContext,
        status: TaskStatus,
        *,
        result: dict[str, Any] | None = None,
        error: AiecsError | None = None,
        celery_id: str | None = None,
    ) -> Outcome:
        request = ctx.request
        keys = TaskKeys(request.user_id, request.task_id)
        info = error.to_info() if error is not None else None
        usage = [u.model_dump(mode="json") for u in ctx.usage]
        event = ctx.make_event(
            "status",
            status=status,
            message=status.value if info is None else info.message,
            result=result.get("result") if result else None,
            error=info,
            usage=[Usage.model_validate(u) for u in usage],
            partial_output=(
                (error.details.get("partial_output") or ctx.partial_output or None)
                if error is not None else None
            ),
            progress=1.0 if status == TaskStatus.COMPLETED else None,
        )
        # The terminal state and its event in one atomic script, queued behind the events
        # already published; a process killed around it leaves both or neither. Queued by
        # this call, before any await: the operation's last events leave in its pipeline.
        recorded = self.publisher.publish_terminal(
            event,
            keys.state(request.step),
            terminal_fields(status, self.settings.aiecs_events_ttl, result=result, error=info,
                            usage=usage),
        )
        # Retried until Redis answers; this task waits AIECS_REDIS_WAIT at most, then the
        # record goes on being retried in the background (and if this process dies first,
        # its lease ends and the execution runs again).
        try:
            seq = await asyncio.wait_for(asyncio.shield(recorded),
                                         timeout=self.settings.aiecs_redis_wait)
        except TimeoutError:
            log.warning("task %s (%s): outcome %s not recorded yet (Redis unreachable); "
                        "still retrying", celery_id, request.key, status.value)
            seq = None
        if seq == 0:
            log.info("task %s (%s) was already terminal; outcome %s not recorded",
                     celery_id, request.key, status.value)
        else:
            metrics.finished(request.task_name, status.value, getattr(ctx, "began", None))
            logs.finished(celery_id, status.value, getattr(ctx, "began", None))
        if self._suspect == keys.state(request.step):
            self._suspect = None  # the finish script released the lock
        if seq:
            await self._release_next(keys.state(request.step))
        return Outcome(status, result=result, error=error, celery_id=celery_id)

    async def _release_next(self, state_key: str) -> None:
        """An execution ended: its slot in its user's fair-share window is free, so send
        that user's next held executions now (see aiecs_worker.store.hold). On failure the
        periodic sweep sends them."""
        s = self.settings
        if not (s.aiecs_fair_window_fast or s.aiecs_fair_window_heavy):
            return
        try:
            keys_, args_ = release_args(s, state_key=state_key)
            released = decode(await self._release(keys=keys_, args=args_))
            if released:
                await self.loop.run_in_executor(None, send_released, released)
        except Exception as exc:  # noqa: BLE001 - the sweep releases them
            log.warning("could not release the executions held behind %s: %s", state_key, exc)

    async def _release_held(self) -> int:
        """Send the held executions that may run: those due within AIECS_SCHEDULE_HORIZON
        (each claimed by one process, then admitted to its window) and those a window
        with a backlog has room for (dropping the window's ended entries first)."""
        s = self.settings
        sends: list[str] = []
        due: list[str] = []
        for _ in range(10):  # up to 5,000 per sweep, 500 per script call
            claimed = decode(await self._claim_due(keys=[DUE_KEY, PENDING_KEY],
                                                   args=[int(s.schedule_horizon * 1000), 500]))
            due += claimed
            if len(claimed) < 8 * 500:
                break
        for i in range(0, len(due), 8):
            state_key, user_id, queue, celery_id, task, request, eta, _ = due[i:i + 8]
            keys_, args_ = admit_args(s, state_key, user_id, queue, None)
            if decode([await self._admit(keys=keys_, args=args_)]) == ["send"]:
                sends += [celery_id, task, queue, request, eta]
        for window in decode(list(await self.redis.smembers(BACKLOG_KEY))):
            keys_, args_ = release_args(s, window=window, clean=True)
            sends += decode(await self._release(keys=keys_, args=args_))
            keys_, args_ = keep_alive_args(s, window)
            await self._keep_alive(keys=keys_, args=args_)
        if not sends:
            return 0
        return await self.loop.run_in_executor(None, send_released, sends)

    def _state_unavailable(self, exc: Exception) -> None:
        if not self._state_down:
            log.warning("task state store unreachable (%s); running without idempotency", exc)
            self._state_down = True

    def _state_available(self) -> None:
        if self._state_down:
            log.warning("task state store reachable again")
            self._state_down = False

    # -- cancellation ----------------------------------------------------------------------------
    def _cancel(self, running: _Running, reason: str) -> None:
        """Stop a running execution, once: the first reason wins, and a task already being
        cancelled (our deadline, an earlier request) is not cancelled again — a second
        request would be delivered at a later await, past the handler, and end the
        execution with a bare CancelledError (seen when Celery's soft limit and our
        deadline fire together)."""
        if running.over:
            return
        if running.cancel_reason is None:
            running.cancel_reason = reason
        running.ctx.cancel()
        task = running.task
        if task is not None and not task.done() and not task.cancelling():
            task.cancel()

    def cancel_local(self, celery_id: str, reason: str = "cancel") -> bool:
        """Cancel a running execution of this process (thread-safe)."""
        running = self.running.get(celery_id)
        if running is None:
            return False
        self.loop.call_soon_threadsafe(self._cancel, running, reason)
        return True

    async def _listen_cancels(self) -> None:
        """Follow cancel requests (pub/sub) and Celery revocations seen by this process."""
        backoff = 0.5
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CANCEL_CHANNEL)
                backoff = 0.5
                while True:
                    message = await pubsub.get_message(timeout=0.25)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        celery_id = data.decode() if isinstance(data, bytes) else str(data)
                        running = self.running.get(celery_id)
                        if running is not None:
                            self._cancel(running, "cancel")
                    self._check_revoked()
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except Exception as exc:  # noqa: BLE001
                log.debug("cancel listener reconnecting: %s", exc)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)

    def _check_revoked(self) -> None:
        """Plain ``AsyncResult.revoke()`` of a running task (in-process pools)."""
        if not self.running:
            return
        for celery_id in list(self.running):
            if celery_id in worker_state.revoked:
                self._cancel(self.running[celery_id], "cancel")

    # -- leases -------------------------------------------------------------------------------
    async def _keep_lease(self) -> None:
        """Renew this process's lease and sweep dead owners' executions, forever."""
        s = self.settings
        # often enough to release a held execution within its horizon (aiecs_worker.store.hold)
        interval = min(s.aiecs_lease_seconds / 3, max(0.5, s.schedule_horizon / 2))
        while True:
            try:
                await self._heartbeat(keys=HEARTBEAT_KEYS, args=[
                    self.owner, s.aiecs_lease_seconds * 1000, self._suspect or ""])
                await self.sweep()
                delay = interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: renew as soon as it is back
                background.failed("lease", "renewing this process's lease and sweeping", exc)
                delay = 0.5
            await asyncio.sleep(delay)

    async def sweep(self) -> int:
        """Queue again the executions of owners whose lease ended, send the held
        executions that may run (see aiecs_worker.store.hold), queue again PENDING executions
        whose message the broker lost, and advance workflows whose advance was missed;
        how many were queued (or released or ended)."""
        queued = await self._sweep_dead_owners()
        queued += await self._release_held()
        lost = await self._reap(keys=REAP_KEYS, args=[
            2 * self.settings.celery_visibility_timeout * 1000, 16, "\x06\x16",
            "1" if self.settings.broker_is_amqp else ""])
        lost = [x.decode() if isinstance(x, bytes) else x for x in lost]
        for i in range(0, len(lost), 5):
            state_key, celery_id, task, queue, request = lost[i:i + 5]
            await self.loop.run_in_executor(None, self._send_again, task, queue, request,
                                            celery_id)
            log.warning("execution %s (%s) still PENDING with an empty queue: its message "
                        "was lost in transit; queued again", celery_id, state_key)
            queued += 1
        # and advances of workflows a dead process did not make
        return queued + await self.loop.run_in_executor(None, sweep_due)

    async def _sweep_dead_owners(self) -> int:
        out = await self._sweep(keys=SWEEP_KEYS, args=[16, time.time()])
        out = [x.decode() if isinstance(x, bytes) else x for x in out]
        queued = 0
        for i in range(0, len(out), 6):
            state_key, celery_id, task, queue, request, charged = out[i:i + 6]
            if not (celery_id and task and request):
                log.error("execution %s of a dead worker cannot be queued again (no arguments "
                          "recorded); the broker redelivers it after its visibility timeout",
                          state_key)
                continue
            await self.loop.run_in_executor(None, self._send_again, task, queue, request,
                                            celery_id)
            log.warning("execution %s (%s) of a dead worker queued again%s", celery_id,
                        state_key, "" if charged else " (crash not charged to it: suspect)")
            queued += 1
        return queued

    @staticmethod
    def _send_again(task: str, queue: str, request: str, celery_id: str) -> None:
        app.send_task(task, kwargs=json.loads(request), task_id=celery_id, queue=queue or None)

    # -- shutdown -----------------------------------------------------------------------------
    async def _aclose(self) -> None:
        self._cancel_listener.cancel()
        self._lease_keeper.cancel()
        with contextlib.suppress(Exception):
            await self.redis.zrem(OWNERS_KEY, self.owner)
        for instance in self.registry.drop_instances():
            try:
                await instance.aclose()
            except Exception:  # noqa: BLE001
                log.exception("closing %r failed", instance)
        await self.publisher.aclose()
        await self.redis.aclose()

    def close(self, timeout: float = 10) -> None:
        if os.getpid() != self.pid or not self.loop.is_running():
            return
        try:
            self.call(self._aclose(), timeout)
        except Exception:  # noqa: BLE001
            log.exception("runtime shutdown failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


def _rebuild_error(info: ErrorInfo) -> AiecsError:
    cls = getattr(errors, info.type, None)
    if not (isinstance(cls, type) and issubclass(cls, AiecsError)):
        return OperationError(info.message, info.details)
    return cls(info.message, info.details)


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
