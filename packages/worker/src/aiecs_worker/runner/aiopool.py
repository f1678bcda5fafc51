"""``--pool asyncio``: the aiecs queues consumed on the runtime's event loop.

Under the threads pool every message goes through Celery's consumer (kombu's ``BRPOP``,
its unacked record, Celery's ``Request``, the strategy, the pool's hand-off to a thread,
the tracer, the result, the acknowledgement) and then hops from the pool thread to the
runtime's event loop, where the execution itself runs. For aiecs's own tasks all of that
is bookkeeping around one ``await``; this pool does the same bookkeeping on the loop,
with redis-py's asyncio client, and runs :meth:`Runtime.execute` directly:

- **the same messages**: Celery's message protocol 2 as ``.delay()`` sends it, taken from
  the same Redis lists kombu's transport uses (one list per priority step, taken in
  kombu's order, the queues rotated as kombu rotates them): while messages wait, up to
  :data:`CLAIM_BATCH` at a time (no more than the free slots) popped and recorded unacked
  in one script call; when the queues are empty, ``BRPOP`` (the record's round trip says
  whether more wait behind: then batches again);
- **the same unacked semantics**: before a message runs it is recorded in kombu's
  ``unacked`` hash and ``unacked_index`` sorted set exactly as kombu's ``QoS.append``
  does, and removed from both once its execution is terminal (``QoS.ack``). A worker
  killed meanwhile leaves it there, and kombu's ``restore_visible`` (run by this pool
  every ``unacked_restore_interval`` × ``unacked_restore_throttle`` seconds, and by any
  Celery worker consuming the queue) puts it back after the visibility timeout;
- **the same results**: Celery's result backend record (``SUCCESS`` with the redacted
  result, ``FAILURE`` with the detached, redacted error, ``REVOKED`` for a cancelled
  execution), so ``.delay().get()`` is unchanged;
- **the same checks**: the poison guard's envelope and message checks (dead-lettered,
  acknowledged), Celery's revocations (``revoke()`` of a queued or running task, through
  Celery's ``Request.revoked()``), the message's ``expires``, ``eta`` and soft time limit,
  the providers' warm-up;
- **the same task signals and worker state**: ``task_received``, ``task_prerun``,
  ``task_success`` / ``task_failure``, ``task_postrun`` (``task_revoked`` for a revoked
  message) with the tracer's arguments and order, sent on the loop from the execution's
  own asyncio task; the message's Celery ``Request`` reserved, active while it runs and
  ready after, in ``celery.worker.state`` (``celery inspect active`` lists it). See
  :mod:`aiecs_worker.runner.aiotrace`.

What it does not do, and then leaves the queues to Celery's consumer (this pool is then
the threads pool, and says why in the log): a RabbitMQ broker, Celery's task events on
(``AIECS_TASK_EVENTS``: Flower's ``task-received`` / ``task-started`` come from Celery's
``Request``), a broker ``global_keyprefix``. A message it cannot run natively (another
task than aiecs's, or one with Celery callbacks, a chain or a chord) runs through Celery's
tracer in a thread, as under the threads pool.

Select it with ``aiecs worker --pool asyncio`` (which passes Celery ``--pool custom`` with
``CELERY_CUSTOM_WORKER_POOL`` naming :class:`TaskPool`); ``--concurrency`` bounds the
executions in flight. Queues other than ``fast_tasks`` / ``heavy_tasks`` given with ``-Q``
stay with Celery's consumer and this pool's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from aiecs_core import TaskStatus, redact_data
from celery import signals, states
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.exceptions import Ignore, Reject, TaskRevokedError
from celery.utils.time import maybe_iso8601, maybe_make_aware
from celery.worker import state as worker_state

from ..ops import tracing
from ..producer.advance import after_step
from ..routing import (
    FAST_QUEUE,
    FAST_TASK,
    FLOW_HEAVY_TASK,
    FLOW_TASK,
    FLOW_TASKS,
    HEAVY_QUEUE,
    HEAVY_TASK,
)
from ..settings import get_settings
from ..store import results
from ..store.connection import async_client
from . import aiotrace, poison, warm
from .runtime import Runtime, StateUnavailableError, get_runtime
from .taskevents import ExecutionCancelled
from .tasks import _detached, message_limit

__all__ = ["POOL", "TaskPool", "why_not_native"]

log = logging.getLogger("aiecs.worker")

#: What ``CELERY_CUSTOM_WORKER_POOL`` names for ``--pool custom``.
POOL = f"{__name__}:TaskPool"
#: The tasks run natively (the others on these queues go through Celery's tracer).
NATIVE_TASKS = frozenset((FAST_TASK, HEAVY_TASK, FLOW_TASK, FLOW_HEAVY_TASK))
#: The queues this pool takes from Celery's consumer.
NATIVE_QUEUES = (FAST_QUEUE, HEAVY_QUEUE)
_BRPOP_TIMEOUT = 1  # seconds: how long a stop waits for the blocked BRPOP at most
#: Most messages one claim takes (and records unacked) in one script call, when the pool
#: has that many free slots: a backlog costs one call per batch, not one per message,
#: and one process does not take a burst its peers could start as soon.
CLAIM_BATCH = 16


def why_not_native(app: Any) -> str | None:
    """Why this worker's aiecs queues must stay with Celery's consumer, or None."""
    s = get_settings()
    if s.broker_is_amqp:
        return "the broker is RabbitMQ (this pool reads kombu's Redis lists)"
    if app.conf.worker_send_task_events:
        return "Celery's task events are on (AIECS_TASK_EVENTS / -E come from Celery's consumer)"
    if (app.conf.broker_transport_options or {}).get("global_keyprefix"):
        return "the broker transport has a global_keyprefix"
    return None


class TaskPool(ThreadTaskPool):
    """The threads pool, whose aiecs queues are consumed by a :class:`Feeder` on the
    runtime's loop (``--pool custom`` + ``CELERY_CUSTOM_WORKER_POOL``)."""

    feeder: Feeder | None = None
    _native_queues: list[str] = []
    _closed = False

    def on_start(self) -> None:
        super().on_start()
        app = self.app
        consume_from = app.amqp.queues.consume_from
        names = [name for name in NATIVE_QUEUES if name in consume_from]
        if not names:
            return
        reason = why_not_native(app)
        if reason is not None:
            log.warning("--pool asyncio: %s; Celery's consumer takes the queues, as under "
                        "the threads pool", reason)
            return
        for name in names:  # before Celery's consumer starts: it never sees them
            consume_from.pop(name)
        self._native_queues = names
        # the first message is taken once the worker is ready, as Celery's consumer takes
        # its first then (the runtime, tracing and the warm-up start at worker_ready): a
        # worker restarted beside a message that kills its process must come up first
        signals.worker_ready.connect(self._on_ready, weak=False)

    def _on_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "pool", None) is not self or self.feeder is not None:
            return
        signals.worker_ready.disconnect(self._on_ready)
        if self._closed:  # stopped before it was ready
            return
        self.feeder = Feeder(get_runtime(), self.app, self._native_queues, self.limit,
                             consumer=sender)
        self.feeder.start()
        log.info("--pool asyncio: %s consumed on the event loop, %d at a time",
                 ", ".join(self._native_queues), self.limit)

    def on_stop(self) -> None:
        self._closed = True
        if self.feeder is not None:
            self.feeder.stop(warm=True)
        super().on_stop()

    def on_terminate(self) -> None:
        self._closed = True
        if self.feeder is not None:
            self.feeder.stop(warm=False)
        super().on_terminate()

    def _get_info(self) -> dict[str, Any]:
        info = super()._get_info()
        if self.feeder is not None:
            info["asyncio"] = {"queues": self.feeder.queues,
                               "running": len(self.feeder.inflight)}
        return info


class Feeder:
    """Takes messages of ``queues`` from the broker and runs them on ``runtime``'s loop,
    at most ``limit`` at a time (see the module's docstring)."""

    def __init__(self, runtime: Runtime, app: Any, queues: list[str], limit: int,
                 consumer: Any = None):
        self.runtime = runtime
        self.consumer = consumer  #: the sender of ``task_received``, as in Celery
        self.app = app
        self.queues = list(queues)
        self.limit = max(1, int(limit))
        s = get_settings()
        options = app.conf.broker_transport_options or {}
        from kombu.transport import redis as kombu_redis  # the worker's transport already

        channel = kombu_redis.Channel
        self.sep = options.get("sep", channel.sep)
        self.steps = list(options.get("priority_steps", kombu_redis.PRIORITY_STEPS))
        self.unacked_key = options.get("unacked_key", channel.unacked_key)
        self.unacked_index_key = options.get("unacked_index_key", channel.unacked_index_key)
        self.restore_every = (options.get("unacked_restore_interval",
                                          channel.unacked_restore_interval)
                              * options.get("unacked_restore_throttle",
                                            channel.unacked_restore_throttle))
        self.broker = async_client(s.redis_target(s.celery_broker_url),
                                   socket_connect_timeout=2, socket_timeout=_BRPOP_TIMEOUT + 10,
                                   health_check_interval=30)
        self.backend = app.backend
        self._one_record = isinstance(self.backend, results.RedisBackend | results.SentinelBackend)
        self._native_backend = _redis_backend(self.backend)
        #: the acknowledgement goes in the terminal step's pipeline (the publisher's, on
        #: the state Redis): when that Redis is the broker's and Celery's result is read
        #: from the record (nothing else to write after the terminal step)
        self._ack_with_terminal = (self._one_record and not s.aiecs_redis_cluster
                                   and s.celery_broker_url == s.state_redis_url)
        if self._native_backend:
            self.results = self.broker if s.result_backend == s.celery_broker_url else \
                async_client(s.redis_target(s.result_backend), socket_connect_timeout=2,
                             socket_timeout=5, health_check_interval=30)
        self.inflight: dict[str, asyncio.Task] = {}
        #: the app's configuration, read once (Celery's Request asks it per message)
        self._utc = app.uses_utc_timezone()
        #: messages wait in the queues (as far as this pool knows): claim a batch
        self.backlog = True
        self._room = asyncio.Event()  # set when an execution ends (a slot is free)
        self.loop = runtime.loop
        self._stopping = False
        self._main: Any = None

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self.loop)

    def stop(self, warm: bool, timeout: float | None = None) -> None:
        """Stop taking messages; ``warm``: wait for the running executions (they finish
        and are acknowledged), else leave them unacknowledged (they come back after the
        visibility timeout)."""
        self._stopping = True
        if self._main is None:
            return
        with contextlib.suppress(Exception):
            self._main.result(timeout=_BRPOP_TIMEOUT + 5)
        if warm:
            fut = asyncio.run_coroutine_threadsafe(self._drain(), self.loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._aclose(), self.loop).result(5)

    async def _drain(self) -> None:
        while self.inflight:
            await asyncio.wait(list(self.inflight.values()))

    async def _aclose(self) -> None:
        await self.broker.aclose()
        if self._native_backend and self.results is not self.broker:
            await self.results.aclose()

    async def _run(self) -> None:
        """Take messages while there is room: with a backlog (``self.backlog``), up to
        :data:`CLAIM_BATCH` at once, popped and recorded unacked in one atomic script
        call; with none, ``BRPOP`` (kombu's own two steps: the pop, then the record, whose
        round trip also says whether more wait behind it, so a trickle makes no empty
        claim calls and a backlog is claimed in batches again)."""
        restorer = asyncio.ensure_future(self._restore_visible())
        claim = self.broker.register_script(_CLAIM)
        order = list(self.queues)
        backoff = 0.1
        try:
            while not self._stopping:
                room = self.limit - len(self.inflight)
                if room <= 0:
                    self._room.clear()
                    await self._room.wait()
                    continue
                keys = [self._key(q, pri) for pri in self.steps for q in order]
                try:
                    taken: list[tuple[bytes, bytes, bool]] = []
                    if self.backlog:
                        want = min(room, CLAIM_BATCH)
                        reply = await claim(keys=[self.unacked_index_key, self.unacked_key,
                                                  *keys], args=[want])
                        taken = [(reply[i], reply[i + 1], bool(reply[i + 2]))
                                 for i in range(0, len(reply), 3)]
                        self.backlog = len(taken) == want  # fewer: the queues are empty
                    if not taken:
                        popped = await self.broker.brpop(keys, timeout=_BRPOP_TIMEOUT)
                        if popped is not None:
                            taken = [(popped[0], popped[1], False)]
                except Exception as exc:  # noqa: BLE001 - the broker away: wait for it
                    log.warning("--pool asyncio: broker unreachable (%s); retrying", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
                for key, item, recorded in taken:
                    name = key.decode() if isinstance(key, bytes) else key
                    queue = name.rsplit(self.sep, 1)[0]
                    if queue in order:  # kombu's rotation: the queue served goes last
                        order.remove(queue)
                        order.append(queue)
                    self._spawn(self._handle(queue, item, recorded, name))
        finally:
            restorer.cancel()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        key = str(id(task))
        self.inflight[key] = task

        def done(t: asyncio.Task) -> None:
            self.inflight.pop(key, None)
            self._room.set()
            if not t.cancelled() and t.exception() is not None:
                log.error("--pool asyncio: a message's handling failed",
                          exc_info=t.exception())

        task.add_done_callback(done)

    def _key(self, queue: str, pri: int) -> str:
        return f"{queue}{self.sep}{pri}" if pri else queue

    async def _restore_visible(self) -> None:
        """kombu's own restore of messages past the visibility timeout (none of this
        worker's channels consumes the queues, so kombu's poller would not run it)."""
        while True:
            try:
                await self.loop.run_in_executor(None, self._restore_visible_sync)
            except Exception as exc:  # noqa: BLE001 - next time
                log.warning("--pool asyncio: restoring unacked messages failed: %s", exc)
            await asyncio.sleep(self.restore_every)

    def _restore_visible_sync(self) -> None:
        with self.app.connection_for_read() as conn:
            channel = conn.default_channel
            channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)

    # -- one message ----------------------------------------------------------------------------
    async def _handle(self, queue: str, raw: bytes, recorded: bool, key: str = "") -> None:
        try:
            payload = json.loads(raw)
        except Exception as exc:  # noqa: BLE001 - not JSON
            await self._dead_letter(raw, f"the envelope is not JSON: {type(exc).__name__}: "
                                    f"{exc}", queue, "transport", None)
            return
        problem = poison.envelope_problem(payload)
        if problem is not None:
            await self._dead_letter(raw, problem, queue, "transport", payload)
            if recorded:  # the claim script recorded what looked like an envelope
                await self._ack(payload["properties"]["delivery_tag"])
            return
        props = payload["properties"]
        tag = props["delivery_tag"]
        info = props["delivery_info"]
        if not recorded:
            # kombu's QoS.append: the message is the delivery's until it is acknowledged;
            # and the length of the list it came from: more waiting, claim them in batches
            text = raw.decode() if isinstance(raw, bytes) else raw
            record = (f"[{text}, {json.dumps(info['exchange'])}, "
                      f"{json.dumps(info['routing_key'])}]")
            await self._record(tag, record, key)
        message = _Message(payload)
        try:
            problem = poison.task_problem(message, self.app.tasks)
        except Exception as exc:  # noqa: BLE001 - a check that fails is a reason too
            problem = f"the message could not be checked: {type(exc).__name__}: {exc}"
        if problem is not None:
            await self._dead_letter(raw, problem, queue, "consumer", payload)
            await self._ack(tag)
            return
        message.tag = tag
        try:
            requeue = await self._take(message, queue)
        except Exception:
            log.exception("--pool asyncio: message %s failed; acknowledged",
                          message.headers.get("id"))
            requeue = False
        if requeue:
            await self.loop.run_in_executor(None, self._requeue_sync, tag)
        elif not message.acked:
            await self._ack(tag)

    async def _record(self, tag: str, record: str, key: str) -> None:
        """kombu's QoS.append of a message ``BRPOP`` handed over, and the length of the
        list ``key`` it came from (more waiting: claim them in batches). The message is in
        hand: the record is retried while the broker is away (AIECS_REDIS_WAIT at most,
        as the begin transition waits), never dropped with the message; past that the
        message runs unrecorded (its begin, when it can, puts it under aiecs's lease)."""
        give_up = time.monotonic() + get_settings().aiecs_redis_wait
        delay = 0.05
        while True:
            try:
                pipe = (self.broker.pipeline(transaction=True)
                        .zadd(self.unacked_index_key, {tag: time.time()})
                        .hset(self.unacked_key, tag, record))
                if key:
                    pipe.llen(key)
                replies = await pipe.execute()
                if key and replies[-1]:
                    self.backlog = True
                return
            except Exception as exc:  # noqa: BLE001 - the broker away (or restarted)
                if time.monotonic() + delay > give_up:
                    log.warning("--pool asyncio: message %s not recorded unacked (%s); "
                                "running it", tag, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _ack_into(self, pipe: Any, tag: str) -> Any:
        """kombu's QoS.ack, queued in ``pipe`` (the hash entry first: an index entry
        left alone is dropped by kombu's restore)."""
        return pipe.hdel(self.unacked_key, tag).zrem(self.unacked_index_key, tag)

    async def _ack(self, tag: str) -> None:
        """kombu's QoS.ack."""
        try:
            await self._ack_into(self.broker.pipeline(transaction=False), tag).execute()
        except Exception as exc:  # noqa: BLE001 - as kombu: the message comes back later
            log.warning("--pool asyncio: acknowledging %s failed (%s); it will be "
                        "redelivered after the visibility timeout", tag, exc)

    def _requeue_sync(self, tag: str) -> None:
        """kombu's ``reject(requeue=True)``: back to the queue's far end."""
        with self.app.connection_for_read() as conn:
            conn.default_channel.qos.restore_by_tag(tag, leftmost=True)

    async def _dead_letter(self, raw: bytes, reason: str, queue: str, layer: str,
                           payload: Any) -> None:
        def run() -> None:
            with self.app.connection_for_read() as conn:
                poison.reject(raw, reason, queue=queue, layer=layer,
                              redis=conn.default_channel.conn_or_acquire, payload=payload)

        try:
            await self.loop.run_in_executor(None, run)
        except Exception:  # noqa: BLE001 - the guard itself must never stop the worker
            log.exception("could not dead-letter a message; dropped it")

    async def _take(self, message: _Message, queue: str) -> bool:
        """Run one task message; True when it goes back to its queue."""
        headers = message.headers
        name, task_id = headers["task"], headers["id"]
        task = self.app.tasks.get(name)
        if task is None:
            log.error("Received unregistered task of type %r (id %s); acknowledged, as "
                      "Celery does", name, task_id)
            return False
        args, kwargs, embed = message.decode()
        req = aiotrace.make_request(self.app, task, message, (args, kwargs, embed),
                                    poison._hostname, self._utc)
        if await self._revoked(req):
            return False
        signals.task_received.send(sender=self.consumer, request=req)
        eta = headers.get("eta")
        if eta and (wait := _timestamp(eta) - time.time()) > 0:
            worker_state.task_scheduled(req)
            try:
                await asyncio.sleep(wait)
            finally:
                aiotrace.ready(req)  # a stop meanwhile: no longer this worker's
            if await self._revoked(req):
                return False
        worker_state.task_reserved(req)
        try:
            if not warm.wait_warm(0):
                await self.loop.run_in_executor(None, _wait_warm)
            ctx = aiotrace.context(req)
            aiotrace.accepted(req)
            if name not in NATIVE_TASKS or any((embed or {}).values()):
                return await self.loop.run_in_executor(None, self._trace_sync, task, args,
                                                       kwargs, ctx)
            return await self._native(task, args, kwargs, ctx, req, queue, message)
        finally:
            aiotrace.ready(req)  # after the execution's own (Celery's Request.on_success)

    async def _revoked(self, req: Any) -> bool:
        """Celery's ``Request.revoked()`` (revoked by id or stamp, or expired: stored
        REVOKED, ``task_revoked`` sent), in a thread when it has to write."""
        if req.id not in worker_state.revoked and not worker_state.revoked_stamps and not (
                req.expires and req.expires.timestamp() < time.time()):
            return False
        return await self.loop.run_in_executor(None, req.revoked)

    async def _native(self, task: Any, args: list, kwargs: dict[str, Any], ctx: Any,
                      req: Any, queue: str, message: _Message) -> bool:
        """One execution on the loop, inside Celery's task signals as its tracer sends
        them (:mod:`aiecs_worker.runner.aiotrace`)."""
        rt = self.runtime
        routing_key = ctx.delivery_info.get("routing_key") or queue
        began = time.monotonic()
        state: str | None = None
        retval: Any = None
        aiotrace.prerun(task, ctx)  # binds the logs' identity (ops/logs.py) in this task
        try:
            try:
                with tracing.execution(ctx, task.name, routing_key):
                    outcome = await rt.execute(
                        args, kwargs, celery_id=ctx.id, soft_limit=message_limit(ctx.timelimit),
                        task=task.name, queue=routing_key,
                        after_terminal=(("HDEL", self.unacked_key, message.tag),
                                        ("ZREM", self.unacked_index_key, message.tag))
                        # a workflow step's message is acknowledged after its advance
                        if self._ack_with_terminal and task.name not in FLOW_TASKS else ())
                if outcome.after_terminal_sent:  # kombu's QoS.ack, with the terminal step
                    message.acked = True
            except StateUnavailableError as exc:
                log.warning("task %s not started: %s; returned to its queue", ctx.id, exc)
                state, retval = states.REJECTED, Reject(str(exc), requeue=True)
                return True
            except Exception as exc:  # noqa: BLE001 - the tracer's FAILURE of a body that raised
                log.exception("task %s raised", ctx.id)
                outcome = None
                error: BaseException = _detached(exc)
            if task.name in FLOW_TASKS:
                await self.loop.run_in_executor(None, after_step, kwargs)
            if outcome is not None and outcome.duplicate:
                state, retval = states.IGNORED, Ignore()
                return False  # a live worker runs this execution; it stores the result
            # Celery's result is read from the record (store.results): nothing to store
            store = not (outcome is not None and outcome.recorded and self._one_record)
            if outcome is not None and outcome.status == TaskStatus.COMPLETED:
                retval = redact_data(outcome.result or {})
                if store:
                    await self._store(ctx.id, retval, states.SUCCESS, ctx, message)
                state = states.SUCCESS
                aiotrace.success(task, ctx, retval, time.monotonic() - began)
            elif outcome is not None and outcome.status == TaskStatus.CANCELLED:
                error = TaskRevokedError(str(outcome.error or "cancelled"))
                if store:
                    await self._store(ctx.id, error, states.REVOKED, ctx, message)
                state, retval = states.IGNORED, ExecutionCancelled()
            else:
                if outcome is not None:
                    error = _detached(outcome.error or TaskRevokedError("task did not complete"))
                if store:
                    await self._store(ctx.id, error, states.FAILURE, ctx, message)
                state, retval = states.FAILURE, error
                aiotrace.failure(task, ctx, error)
            return False
        finally:
            aiotrace.postrun(task, ctx, retval, state)
            aiotrace.ready(req, successful=state == states.SUCCESS)

    async def _store(self, task_id: str, result: Any, state: str, request: Any,
                     message: _Message) -> None:
        """Celery's result backend record, as the tracer stores it; a SUCCESS on the
        broker's Redis carries the message's acknowledgement in the same round trip."""
        backend = self.backend
        if not self._native_backend:
            await self.loop.run_in_executor(
                None, lambda: backend.store_result(task_id, result, state, request=request))
            return
        meta = backend._get_result_meta(result=backend.encode_result(result, state),
                                        state=state, traceback=None, request=request)
        meta["task_id"] = task_id
        value = backend.encode(meta)
        key = backend.get_key_for_task(task_id)
        expires = backend.failure_expires if state == states.FAILURE else backend.expires
        delay = 0.05
        give_up = time.monotonic() + 30
        while True:
            try:
                if state == states.SUCCESS:
                    pipe = self.results.pipeline(transaction=False)
                    (pipe.setex(key, expires, value) if expires else pipe.set(key, value))
                    pipe.publish(key, value)
                    if self.results is self.broker:
                        self._ack_into(pipe, message.tag)
                        message.acked = True
                    await pipe.execute()
                else:  # never over a SUCCESS (Celery's own check, one round trip here)
                    await self.results.eval(_STORE_UNLESS_SUCCESS, 1, key, value,
                                            int(expires or 0))
                return
            except Exception as exc:  # noqa: BLE001 - as result_backend_always_retry
                if time.monotonic() > give_up:
                    log.error("task %s: result not stored: %s", task_id, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _trace_sync(self, task: Any, args: list, kwargs: dict[str, Any], ctx: Any) -> bool:
        """Celery's tracer, as under the threads pool; True when it asks to requeue."""
        from celery.app.trace import trace_task

        try:
            trace_task(task, ctx.id, args, kwargs, dict(vars(ctx)), app=self.app,
                       hostname=ctx.hostname, eager=False)
        except Reject as exc:
            return bool(exc.requeue)
        return False


#: Pop up to ARGV[1] messages of KEYS[3:] (kombu's priority order) and record each unacked
#: as kombu's QoS.append does (``unacked_index`` score: the time; ``unacked``: ``[message,
#: exchange, routing_key]``), atomically; flat {key, item, 1, ...}, with 0 for an item that
#: is no envelope (not recorded: the poison guard dead-letters it); empty when none waits.
_CLAIM = """
local out = {}
local want = tonumber(ARGV[1])
local now = nil
for i = 3, #KEYS do
  while #out < 3 * want do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    local recorded = 0
    local ok, m = pcall(cjson.decode, item)
    if ok and type(m) == 'table' and type(m['properties']) == 'table' then
      local p = m['properties']
      local info = p['delivery_info']
      local tag = p['delivery_tag']
      if type(tag) == 'string' and tag ~= '' and type(info) == 'table'
          and type(info['exchange']) == 'string' and type(info['routing_key']) == 'string' then
        if not now then
          local t = redis.call('TIME')
          now = tonumber(t[1]) + tonumber(t[2]) / 1000000
        end
        redis.call('ZADD', KEYS[1], now, tag)
        redis.call('HSET', KEYS[2], tag, '[' .. item .. ', ' .. cjson.encode(info['exchange'])
          .. ', ' .. cjson.encode(info['routing_key']) .. ']')
        recorded = 1
      end
    end
    out[#out + 1] = KEYS[i]
    out[#out + 1] = item
    out[#out + 1] = recorded
  end
  if #out >= 3 * want then break end
end
return out
"""

_STORE_UNLESS_SUCCESS = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


def _wait_warm() -> None:
    if not warm.wait_warm():
        log.warning("the providers' warm-up takes over %.0fs; tasks start anyway",
                    warm.WARM_WAIT)


def _redis_backend(backend: Any) -> bool:
    """Whether the result backend is Celery's plain Redis backend (written here with the
    asyncio client); any other is written through its own client, in a thread."""
    from celery.backends.redis import RedisBackend, SentinelBackend

    return type(backend) is RedisBackend and not isinstance(backend, SentinelBackend) \
        and backend.serializer == "json" and not backend.app.conf.result_extended


def _timestamp(value: str) -> float:
    return maybe_make_aware(maybe_iso8601(value)).timestamp()


class _Message:
    """What the poison guard's :func:`~aiecs_worker.runner.poison.task_problem` reads of a
    kombu message, built from the popped envelope."""

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload
        self.headers = payload.get("headers") or {}
        self.properties = payload["properties"]
        self.content_type = payload.get("content-type")
        self.content_encoding = payload.get("content-encoding")
        self.delivery_info = self.properties.get("delivery_info") or {}
        self._decoded: Any = None
        self.tag = ""
        self.acked = False

    def decode(self) -> Any:
        if self._decoded is None:
            from kombu.serialization import loads

            body = self.payload.get("body")
            if self.properties.get("body_encoding") == "base64" and body:
                import base64

                body = base64.b64decode(body)
            self._decoded = loads(body, self.content_type, self.content_encoding,
                                  accept=["application/json"])
        return self._decoded
