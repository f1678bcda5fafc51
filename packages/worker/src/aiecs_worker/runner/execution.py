"""One execution on the runtime's loop: parse, begin (lease, deliveries, cancel),
run the operation with its retries under the deadline, finish (the terminal record and
event), then free the fair-share slot (see :mod:`aiecs_worker.runner.runtime`)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import traceback
from typing import Any

import aiecs_core.errors as errors
from aiecs_core import (
    AiecsError,
    ErrorInfo,
    InvalidTaskError,
    OperationContext,
    OperationError,
    TaskCancelledError,
    TaskRequest,
    TaskResult,
    TaskStatus,
    TaskTimeoutError,
    Usage,
    WorkerLostError,
    invoke_operation,
    validate_input,
)
from aiecs_core.llm import price_version

from ..ops import logs, metrics, tracing
from ..producer.release import send_released
from ..store.events import TaskKeys, celery_task_id, script_args
from ..store.hold import admit_args, decode, keep_alive_args, release_args
from ..store.keys import (
    SHARD_PREFIXES,
    backlog_key,
    celery_index_key,
    due_key,
    owned_key,
    owners_key,
    pending_key,
    prefix_of,
    steps_key,
    suspect_key,
)
from ..store.lease import WORKER_HOST, holder_is_dead_here
from ..store.records import terminal_fields
from ..store.requests import parse_request, routable_call
from ..store.state import MESSAGE_SLOT
from .context import (
    Outcome,
    RuntimeState,
    StateUnavailableError,
    WorkerContext,
    _Running,
    sleep_at_least,
)
from .ratelimit import limited_call

__all__ = ["ExecutionMixin"]

log = logging.getLogger("aiecs.worker")


class ExecutionMixin(RuntimeState):
    """The :class:`~aiecs_worker.runner.runtime.Runtime`'s execution of one task."""

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
        after_terminal: tuple[tuple[Any, ...], ...] = (),
    ) -> Outcome:
        """One execution, the five steps of the module's docstring. ``after_terminal``:
        Redis commands (idempotent, on the state Redis) sent right after its terminal step
        in the same pipeline, when this delivery makes it (``Outcome.after_terminal_sent``):
        ``--pool asyncio`` acknowledges its message there, one round trip fewer."""
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
                                       task, queue, after_terminal)
        finally:
            self._executing.discard(state_key)

    async def _execute(self, request: TaskRequest, keys: TaskKeys, celery_id: str,
                       started: float, deadline: float, limit: float, task: str,
                       queue: str, after_terminal: tuple[tuple[Any, ...], ...] = ()
                       ) -> Outcome:
        ctx = WorkerContext(request, self, deadline=deadline, queue=queue)
        ctx.after_terminal = after_terminal
        # what to call, before the begin transition: a request that cannot run (no such
        # service or operation, invalid input) ends FAILED without ever being RUNNING
        unfit = self._prepare(ctx)
        status, deliveries, cancel_requested, suspect = await self._begin_execution(
            ctx, keys, celery_id, task, queue, start=unfit is None
        )
        if status == "duplicate":
            return Outcome(TaskStatus.RUNNING, celery_id=celery_id, duplicate=True)
        if status != TaskStatus.RUNNING.value:
            return await self._replay(request, keys, status, celery_id)
        refused = self._refusal(request, celery_id, deliveries, cancel_requested)
        if refused is None and unfit is not None:
            refused = TaskStatus.FAILED, unfit
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
        metrics.started(ctx.queue, request.mode, request.service, request.task_name)
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

    def _prepare(self, ctx: WorkerContext) -> AiecsError | None:
        """Resolve the operation, validate its input and get the service instance
        (``ctx.operation``), or the error that keeps the execution from running."""
        request = ctx.request
        try:
            spec = self.registry.operation(request.mode, request.service, request.task_name)
            data = validate_input(spec, request.input_data)
            instance = self.registry.instance(request.mode, request.service)
        except AiecsError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not kill the worker
            log.error("service %s/%s could not be set up:\n%s", request.mode, request.service,
                      "".join(traceback.format_exception(exc)))
            return OperationError(f"{type(exc).__name__}: {exc}",
                                  exception_type=type(exc).__name__)
        ctx.operation = (spec, data, instance)
        return None

    async def _attempts(self, ctx: WorkerContext) -> tuple[Any, int]:
        assert ctx.operation is not None  # resolved by _prepare before it began
        spec, data, instance = ctx.operation
        s = self.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await limited_call(
                    self.limiter, instance, spec.name, data, ctx,
                    lambda: tracing.provider_call(
                        instance, spec.name, data, ctx, metrics.provider_call(
                            instance, spec.name, ctx, invoke_operation(instance, spec, ctx, data))),
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
        self, ctx: WorkerContext, keys: TaskKeys, celery_id: str, task: str, queue: str,
        *, start: bool = True,
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
        state_key = keys.state(request.step)
        shard = prefix_of(state_key)
        keys_ = [state_key, steps_key(request.user_id, request.task_id),
                 celery_index_key(celery_id, shard), owners_key(shard),
                 owned_key(self.owner, shard), *ev_keys, pending_key(shard)]
        args = [celery_id, s.aiecs_events_ttl, time.time(), request.user_id, request.task_name,
                request.step, s.aiecs_max_deliveries, self.owner, s.aiecs_lease_seconds * 1000,
                request.model_dump_json(), queue, task, "" if start else "x", *ev_args]
        flags = 12  # index of the flags in args
        give_up = time.monotonic() + s.aiecs_redis_wait
        delay = 0.05
        while True:
            try:
                status, deliveries, cancel, suspect, holder, *prior = await self._begin(
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
                if prior:
                    self._count_begin(request, queue, prior)
                return status, int(deliveries), bool(cancel), bool(suspect)
            holder = holder.decode() if isinstance(holder, bytes) else holder
            if holder_is_dead_here(holder):
                args[flags] += "1"  # its process is gone: take over now
                continue
            # A live (or not yet swept) holder: if it dies, the sweeper queues the
            # execution again from its record, so this copy is not needed.
            log.info("task %s (%s) is held by %s: this delivery is a duplicate, dropped",
                     celery_id, request.key, holder)
            return "duplicate", int(deliveries), False, False

    @staticmethod
    def _count_begin(request: TaskRequest, queue: str, prior: list[Any]) -> None:
        """What the begin transition found, counted: the PENDING record of an execution
        no worker had begun (counted here, once, whoever submitted it), a redelivery."""
        status = prior[0].decode() if isinstance(prior[0], bytes) else prior[0]
        delivered = int(prior[1])
        if status == TaskStatus.PENDING.value and delivered == 0:
            metrics.pending(queue, request.mode, request.service, request.task_name)
        if delivered > 0:
            metrics.redelivered(queue)

    async def _isolate(self, ctx: WorkerContext, state_key: str) -> None:
        """Run a crash suspect alone among the suspects of its shard, cluster-wide (see
        lease.py)."""
        lease_ms = self.settings.aiecs_lease_seconds * 1000
        lock = suspect_key(prefix_of(state_key))
        told = False
        while True:
            if await self.redis.set(lock, state_key, nx=True, px=lease_ms) or (
                await self.redis.get(lock)
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
        tracing.terminal(status.value, info)
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
        then = getattr(ctx, "after_terminal", ())
        recorded = self.publisher.publish_terminal(
            event,
            keys.state(request.step),
            terminal_fields(status, self.settings.aiecs_events_ttl, result=result, error=info,
                            usage=usage,
                            meta=self._history_meta(ctx) if self.settings.aiecs_history
                            else None, worker=True),
            then,
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
            metrics.finished(getattr(ctx, "queue", ""), request.mode, request.service,
                             request.task_name, status.value, getattr(ctx, "began", None))
            logs.finished(celery_id, status.value, getattr(ctx, "began", None))
        if self._suspect == keys.state(request.step):
            self._suspect = None  # the finish script released the lock
        # the user's next held executions, sent now: only when the terminal script said
        # some wait behind this one (a publisher that cannot tell: always, as before)
        if seq and getattr(seq, "held", True):
            await self._release_next(keys.state(request.step))
        return Outcome(status, result=result, error=error, celery_id=celery_id,
                       recorded=celery_id is not None, after_terminal_sent=bool(then))

    def _history_meta(self, ctx: OperationContext) -> dict[str, Any]:
        """What the history row needs that the state does not hold (see
        :func:`aiecs_worker.store.records.terminal_fields`)."""
        request = ctx.request
        plugin = self.registry.plugin_for(request.mode, request.service)
        meta: dict[str, Any] = {"worker": WORKER_HOST}
        if plugin is not None:
            meta["plugin"] = plugin.distribution or plugin.name
            if plugin.version:
                meta["plugin_version"] = plugin.version
        first = getattr(ctx, "first_output_at", None)
        if first is not None:
            meta["first_output_at"] = first
        prices = price_version()
        if prices is not None:
            meta["price_version"] = prices
        return meta

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
        for shard in SHARD_PREFIXES:
            for _ in range(10):  # up to 5,000 per shard and sweep, 500 per script call
                claimed = decode(await self._claim_due(
                    keys=[due_key(shard), pending_key(shard)],
                    args=[int(s.schedule_horizon * 1000), 500]))
                due += claimed
                if len(claimed) < 9 * 500:
                    break
        for i in range(0, len(due), 9):
            state_key, user_id, queue, celery_id, task, request, eta, trace, _ = due[i:i + 9]
            keys_, args_ = admit_args(s, state_key, user_id, queue, None)
            if decode([await self._admit(keys=keys_, args=args_)]) == ["send"]:
                sends += [celery_id, task, queue, request, eta, trace]
        windows = []
        for shard in SHARD_PREFIXES:
            windows += decode(list(await self.redis.smembers(backlog_key(shard))))
        for window in windows:
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


def _rebuild_error(info: ErrorInfo) -> AiecsError:
    cls = getattr(errors, info.type, None)
    if not (isinstance(cls, type) and issubclass(cls, AiecsError)):
        return OperationError(info.message, info.details)
    return cls(info.message, info.details)
