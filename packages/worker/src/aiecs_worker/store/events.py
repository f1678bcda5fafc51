"""Where task events go: one publisher interface, backed by Redis.

Every event of a task is, in one atomic Lua call:

1. numbered: ``seq = INCR aiecs:t:{user}:{task}:seq`` (increasing across all steps);
2. appended to the task's durable log, the stream ``aiecs:t:{user}:{task}:log`` with entry
   id ``{seq}-0`` and field ``e`` = the event JSON (bounded by ``AIECS_EVENTS_MAXLEN``,
   expiring ``AIECS_EVENTS_TTL`` after the last event);
3. published on the Socket.IO manager channel (``AIECS_SOCKETIO_CHANNEL``) as a
   python-socketio pub/sub ``emit`` packet of event ``task_event`` to room ``user:{user}``,
   so any ``socketio.AsyncServer(client_manager=AsyncRedisManager(...))`` delivers it to
   that user's connections, on whichever host they are.

Keys are scoped by user: two users may both own a task called ``task_456``.

Publishing never fails a task. When Redis is unreachable a progress or stream event is
dropped and the outage is logged once (not once per event); the next success is logged
too. A terminal transition is never dropped: it is retried until Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from aiecs_core import TaskEvent, redact_json
from redis.exceptions import NoScriptError

from ..ops import metrics
from ..settings import RedisTarget
from .connection import async_client
from .keys import TaskKeys, finish_keys
from .results import celery_meta
from .scripts import load_together, pipelined
from .state import MESSAGE_SLOT, begin_lua, finish_lua, pending_lua

__all__ = [
    "EVENT_NAME",
    "HELD_ARG",
    "PENDING_ARGS",
    "PENDING_KEYS",
    "Ended",
    "EventPublisher",
    "RedisEventPublisher",
    "TaskKeys",
    "celery_task_id",
    "pending_publish_lua",
    "user_room",
]

log = logging.getLogger("aiecs.events")

#: Socket.IO event name carrying TaskEvent payloads.
EVENT_NAME = "task_event"
_CELERY_ID_NAMESPACE = uuid.UUID("6f1d1c3e-8a4b-4f7e-9a51-2d7b9b1a0a11")
_NAMESPACE_BYTES = _CELERY_ID_NAMESPACE.bytes


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def celery_task_id(user_id: str, task_id: str, step: int) -> str:
    """The Celery task id of execution ``(user_id, task_id, step)``: a UUID5, deterministic.

    Submitting the same execution twice reuses the id, so the result backend, revocation
    and idempotency all refer to one execution.
    """
    # uuid.uuid5's value, without building a UUID object (a third of its cost; every
    # submission derives one): SHA-1 of namespace + name, version 5, RFC 4122 variant
    h = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{user_id}:{task_id}:{step}".encode(),
                               usedforsecurity=False).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _publish_lua(seq: str, log: str, arg: int, *, event: str | None = None,
                 expire: str = "first") -> str:
    """Number, log and publish one event: Lua code over the keys ``seq`` and ``log`` and
    six ARGV from index ``arg`` on: event json (no seq, starts with '{'), maxlen, ttl,
    channel, packet prefix, packet suffix.  Leaves the assigned seq in the local ``seq``.

    ``event`` replaces the event JSON by a Lua expression. ``expire`` says when the
    task's keys (shared by its steps) get a TTL: ``"first"``, when the task's first event
    creates them; ``"extend"``, when they have less than ``ttl`` left (a submission: one
    scheduled further ahead than their TTL keeps them until it runs); ``"retain"``, by the
    terminal transition's ``retain`` (:func:`aiecs_worker.store.state.finish_lua`: the
    workers' TTL, unless another step still needs longer). So a task's keys live
    AIECS_EVENTS_TTL after its last terminal event.
    """
    a = [f"ARGV[{arg + i}]" for i in range(6)]
    ev = event or a[0]
    set_ttl = {
        "first": f"""if seq == 1 then
  redis.call('EXPIRE', {seq}, {a[2]})
  redis.call('EXPIRE', {log}, {a[2]})
end""",
        "extend": f"""for _, k in ipairs({{{seq}, {log}}}) do
  if seq == 1 or redis.call('TTL', k) < tonumber({a[2]}) then
    redis.call('EXPIRE', k, {a[2]})
  end
end""",
        "retain": f"retain({seq})\nretain({log})",
    }[expire]
    return f"""
local seq = redis.call('INCR', {seq})
local ev = '{{"seq":' .. seq .. ',' .. string.sub({ev}, 2)
redis.call('XADD', {log}, 'MAXLEN', '~', {a[1]}, seq .. '-0', 'e', ev)
{set_ttl}
redis.call('PUBLISH', {a[3]}, {a[4]} .. ev .. {a[5]})
"""


# KEYS: seq, log.  ARGV: event json, maxlen, ttl, channel, packet prefix, packet suffix.
PUBLISH_LUA = _publish_lua("KEYS[1]", "KEYS[2]", 1) + "return seq\n"

#: ARGV index of the terminal script's last, optional argument: ``1`` asks whether the
#: execution's fair-share window has executions held behind it (see :data:`HELD_LUA`).
HELD_ARG = 16

#: The end of :data:`FINISH_PUBLISH_LUA` (``f``: the state's fields finish_lua read, ``f[5]``
#: its fair-share window, which the transition has just left): asked (ARGV[HELD_ARG]), it
#: answers ``{seq, 1}`` when the window's FIFO of held executions is not empty, so the
#: worker that ended it runs the release (store/hold.py RELEASE_LUA) only then: with
#: nothing held, no second script call. The FIFO, ``f[5] .. ':held'``, is in the window's
#: hash slot (the user's key, see store/keys.py window_key).
HELD_LUA = f"""if ARGV[{HELD_ARG}] == '1' and f[5] and redis.call('LLEN', f[5] .. ':held') > 0 then
  return {{seq, 1}}
end
"""

# KEYS: keys.FINISH_KEYS (state, seq, log, then the keys finish_lua touches; finish_args
# builds them).  ARGV: status, result, error, usage, now, ttl (the state's), then
# PUBLISH_LUA's, then (optional) meta, outbox, the Celery result meta and HELD_ARG.  The
# terminal transition and its event in one atomic step: no process death between them can
# leave a finished execution without its terminal event, and the loser of a race appends
# nothing. Returns the event's seq, or 0 when already terminal; {seq, 1} when asked and
# executions are held behind it (HELD_LUA).
FINISH_PUBLISH_LUA = finish_lua(
    _publish_lua("KEYS[2]", "KEYS[3]", 7, expire="retain") + HELD_LUA + "return seq\n",
    extra=13)

#: How many KEYS and ARGV :data:`PENDING_PUBLISH_LUA` takes (a script built on it by
#: :func:`pending_publish_lua` takes its own after them).
PENDING_KEYS, PENDING_ARGS = 6, 15


def pending_publish_lua(*, before: str = "", result: str = "seq") -> str:
    """A submission's PENDING record and event in one round trip. KEYS: state, steps,
    celery index, pending, seq, log.  ARGV: PENDING's nine, then PUBLISH_LUA's.  Returns 0
    (the execution has a state: nothing done) or ``result`` (a Lua expression; ``seq``
    holds the event's seq). ``before``: Lua run first when the execution has no state
    (it may return: then nothing is recorded)."""
    return pending_lua(_publish_lua("KEYS[5]", "KEYS[6]", 10, expire="extend")
                       + f"return {result}\n", before=before)


PENDING_PUBLISH_LUA = pending_publish_lua()

# a process that loads one of the publisher's scripts loads both (see RedisEventPublisher._send)
load_together(PUBLISH_LUA, FINISH_PUBLISH_LUA)

# KEYS: begin's five, seq, log, pending.  ARGV: begin's thirteen, then PUBLISH_LUA's, whose event
# JSON holds MESSAGE_SLOT where the RUNNING event's message goes.  The begin transition
# and, when the execution starts, its RUNNING event, in one round trip before the
# operation is called.
BEGIN_PUBLISH_LUA = begin_lua(_publish_lua(
    "KEYS[6]", "KEYS[7]", 14,
    event=f"(string.gsub(ARGV[14], '{MESSAGE_SLOT}', msg, 1))"))


def encode_event(event: TaskEvent) -> str:
    """Event JSON without ``seq`` (the Lua script prepends it), redacted: every event
    (log, pub/sub) goes through here."""
    return redact_json(event.model_dump_json(exclude={"seq"}))


def packet_parts(user_id: str) -> tuple[str, str]:
    """The python-socketio pub/sub emit packet around an event JSON."""
    head = (
        '{"method":"emit","event":"' + EVENT_NAME + '","namespace":"/","room":'
        + json.dumps(user_room(user_id))
        + ',"skip_sid":null,"callback":null,"host_id":"aiecs-worker","data":'
    )
    return head, "}"


def script_args(
    event: TaskEvent, channel: str, maxlen: int, ttl: int, prefix: str | None = None
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`PUBLISH_LUA` for one event."""
    keys = TaskKeys(event.user_id, event.task_id, prefix)
    head, tail = packet_parts(event.user_id)
    return [keys.seq, keys.log], [encode_event(event), maxlen, ttl, channel, head, tail]


def run_script(client: Any, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run a Lua script with a synchronous client: one EVALSHA through
    :func:`aiecs_worker.store.scripts.pipelined` (the script, and those declared to be
    loaded with it, loaded on first use and again when Redis lost them)."""
    return pipelined(client, [(script, len(keys), *keys, *args)])[0]


def publish_sync(client: Any, event: TaskEvent, channel: str, maxlen: int, ttl: int) -> int:
    """Publish one event with a synchronous redis client (control paths, not hot paths)."""
    keys, args = script_args(event, channel, maxlen, ttl)
    return int(run_script(client, PUBLISH_LUA, keys, args))


def finish_args(keys: list[str], args: list[Any], state_key: str,
                finish: Sequence[Any], *, held: bool = False) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``FINISH_PUBLISH_LUA`` from PUBLISH_LUA's and the terminal state's
    fields (status, result, error, usage, now, ttl, then optionally meta, outbox and
    whether Celery's result is published from the record); the JSON fields are redacted.
    ``held``: the script also says whether executions are held behind this one
    (:data:`HELD_LUA`)."""
    finish = [redact_json(f) if isinstance(f, str) else f for f in finish]
    if len(finish) > 8 and finish[8]:  # the Celery result, from the redacted record
        finish[8] = celery_meta(finish[0], finish[1], finish[2], finish[4])
    argv = [*finish[:6], *args, *finish[6:]]
    if held:
        assert len(argv) < HELD_ARG, "the terminal script's ARGV grew: move HELD_ARG"
        argv += [""] * (HELD_ARG - 1 - len(argv)) + ["1"]
    return finish_keys(state_key, *keys), argv


class Ended(int):
    """What the publisher's terminal step resolves to: the terminal event's seq (0: the
    execution was already terminal), and ``held``: whether its fair-share window has
    executions held behind it (the worker that ended it releases them, store/hold.py)."""

    held: bool = False

    @classmethod
    def of(cls, reply: Any) -> Ended:
        if isinstance(reply, list):  # {seq, 1}: held executions wait (HELD_LUA)
            out = cls(int(reply[0]))
            out.held = True
            return out
        return cls(int(reply))


def finish_sync(client: Any, event: TaskEvent, state_key: str, finish: Sequence[Any],
                channel: str, maxlen: int, ttl: int) -> int:
    """Make an execution terminal and publish its terminal event, atomically (sync client).

    Returns the event's seq, or 0 when the execution was already terminal (nothing done).
    """
    keys, args = finish_args(*script_args(event, channel, maxlen, ttl), state_key, finish)
    return int(run_script(client, FINISH_PUBLISH_LUA, keys, args))


def coalesce(items: Sequence[_Item]) -> list[_Item]:
    """Merge the stream events of one execution that wait together into one event.

    Only events already queued are merged, so an idle publisher adds no latency; under
    load (many streams, a slow Redis) a task's deltas that piled up behind one round trip
    go out as one event with their text concatenated, in order. A non-stream event of the
    same execution ends the run, so the order of each execution's events is kept.
    """
    out: list[_Item] = []
    open_run: dict[tuple[str, str, int], int] = {}
    for item in items:
        event, fut, finish = item
        key = (event.user_id, event.task_id, event.step)
        if event.type == "stream" and fut is None and finish is None and event.delta:
            i = open_run.get(key)
            if i is not None:
                first = out[i][0]
                out[i] = (first.model_copy(update={"delta": first.delta + event.delta}),
                          None, None)
                continue
            open_run[key] = len(out)
        else:
            open_run.pop(key, None)
        out.append(item)
    return out


def _is_noscript(result: Any) -> bool:
    return isinstance(result, NoScriptError)


#: A queued event: (event, future for its seq or None, (state key, FINISH fields, commands
#: sent after it) or None).
_Item = tuple[TaskEvent, "asyncio.Future | None",
              "tuple[str, list[Any], tuple[tuple[Any, ...], ...]] | None"]


class EventPublisher(Protocol):
    """Anything the runner can hand events to."""

    def publish_nowait(self, event: TaskEvent) -> None:
        """Queue an event; never blocks, never raises."""

    async def publish(self, event: TaskEvent) -> int | None:
        """Publish after everything queued before it; return its seq (None if dropped)."""

    def publish_terminal(self, event: TaskEvent, state_key: str, finish: Sequence[Any],
                         then: Sequence[Sequence[Any]] = ()) -> asyncio.Future[int | None]:
        """Queue, now, the step that makes the execution terminal and publishes ``event``
        atomically, after everything queued before it; the future resolves to its seq, 0
        if it was already terminal (:class:`Ended`, whose ``held`` says whether executions
        are held behind it, when the publisher knows; a plain int when it does not).
        Queued at the call, not when the future is awaited: the events an operation
        emitted just before it ended go out in the same pipeline. ``then``: Redis
        commands sent right after the terminal step, in its pipeline (``--pool asyncio``'s
        acknowledgement of the message); their replies are not read, and they are sent
        again with it when it is retried (they must be idempotent).
        """

    async def aclose(self) -> None: ...


class RedisEventPublisher:
    """Publishes events in order, pipelining whatever is queued, from one event loop."""

    def __init__(
        self,
        redis_url: str | RedisTarget,
        *,
        channel: str = "socketio",
        maxlen: int = 10_000,
        ttl: int = 86_400,
        prefix: str | None = None,
        batch: int = 256,
    ):
        self.redis = async_client(
            redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        self.channel = channel
        self.maxlen = maxlen
        self.ttl = ttl
        self.prefix = prefix
        self.batch = batch
        self._script = self.redis.register_script(PUBLISH_LUA)
        self._finish_script = self.redis.register_script(FINISH_PUBLISH_LUA)
        self._queue: asyncio.Queue[_Item] | None = None
        self._consumer: asyncio.Task | None = None
        self._down = False
        #: both scripts loaded on this client before its first pipeline (see _send)
        self._loaded = False

    def _ensure(self) -> asyncio.Queue:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._consumer = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    def publish_nowait(self, event: TaskEvent) -> None:
        self._ensure().put_nowait((event, None, None))

    async def publish(self, event: TaskEvent) -> int | None:
        fut = asyncio.get_running_loop().create_future()
        self._ensure().put_nowait((event, fut, None))
        return await fut

    def publish_terminal(self, event: TaskEvent, state_key: str, finish: Sequence[Any],
                         then: Sequence[Sequence[Any]] = ()) -> asyncio.Future[int | None]:
        fut = asyncio.get_running_loop().create_future()
        self._ensure().put_nowait((event, fut, (state_key, list(finish),
                                                tuple(tuple(c) for c in then))))
        return fut

    def _args(self, event: TaskEvent) -> tuple[list[str], list[Any]]:
        return script_args(event, self.channel, self.maxlen, self.ttl, self.prefix)

    async def _run(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            items = [await queue.get()]
            while len(items) < self.batch and not queue.empty():
                items.append(queue.get_nowait())
            items = coalesce(items)
            seqs = await self._send(items)
            retry = []
            dropped = 0
            for item, seq in zip(items, seqs, strict=True):
                if seq is None and item[2] is not None:
                    retry.append(item)  # a terminal transition is never dropped
                    continue
                dropped += seq is None
                if item[1] is not None and not item[1].done():
                    item[1].set_result(seq)
            metrics.events_dropped(dropped)
            await self._until_recorded(retry)

    async def _until_recorded(self, items: list[_Item]) -> None:
        """Retry terminal transitions until Redis answers, holding later events back so
        the log keeps its order. The finish script is idempotent: a transition Redis ran
        although its reply was lost is not recorded twice."""
        delay = 0.05
        while items:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            metrics.events_retried(len(items))
            seqs = await self._send(items)
            if seqs[0] is not None:
                for (_, fut, _), seq in zip(items, seqs, strict=True):
                    if fut is not None and not fut.done():
                        fut.set_result(seq)
                return

    async def _send(self, items: Sequence[_Item]) -> list[int | None]:
        """One pipeline of EVALSHAs (redis-py's Script in a pipeline would send SCRIPT
        EXISTS first, every time); scripts are loaded when Redis says NOSCRIPT (a new or
        restarted Redis), and only the items it refused are sent again.

        Both scripts are loaded before the first pipeline: had another process loaded one
        of them (its own terminal transitions, say) and not the other, a pipeline of a
        task's last events and its terminal transition would run the terminal one and be
        refused the others, which then, sent again, went into the log after it. A Redis
        that lost its scripts (a restart, SCRIPT FLUSH) refuses both alike: the refused
        items are sent again in their order, and every process that loads one of these
        scripts loads both (:func:`aiecs_worker.store.scripts.load_together`)."""
        try:
            if not self._loaded:
                for script in (self._script, self._finish_script):
                    await self.redis.script_load(script.script)
                self._loaded = True
            seqs = await self._pipeline(items)
            retry = [i for i, r in enumerate(seqs) if _is_noscript(r)]
            if retry:
                for script in (self._script, self._finish_script):
                    await self.redis.script_load(script.script)
                again = await self._pipeline([items[i] for i in retry])
                for i, r in zip(retry, again, strict=True):
                    seqs[i] = r
            for r in seqs:
                if isinstance(r, Exception):
                    raise r
        except Exception as exc:  # noqa: BLE001 - publishing never fails a task
            if not self._down:
                log.warning("event publishing failed, dropping events until Redis is back: %s",
                            exc)
                self._down = True
            return [None] * len(items)
        if self._down:
            log.warning("event publishing recovered")
            self._down = False
        return [Ended.of(s) if finish is not None else int(s)
                for (_, _, finish), s in zip(items, seqs, strict=True)]

    async def _pipeline(self, items: Sequence[_Item]) -> list[Any]:
        """The items' replies, one each (the commands sent after a terminal step left
        out)."""
        sent_after = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for event, _, finish in items:
                keys, args = self._args(event)
                if finish is None:
                    pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
                    sent_after.append(0)
                else:
                    state_key, fields, then = finish
                    keys, args = finish_args(keys, args, state_key, fields, held=True)
                    pipe.execute_command("EVALSHA", self._finish_script.sha, len(keys),
                                         *keys, *args)
                    for command in then:
                        pipe.execute_command(*command)
                    sent_after.append(len(then))
            replies = list(await pipe.execute(raise_on_error=False))
        if len(replies) == len(items):
            return replies
        out, i = [], 0
        for n in sent_after:
            out.append(replies[i])
            i += 1 + n
        return out

    async def aclose(self) -> None:
        if self._consumer is not None:
            # let queued events go out first
            if self._queue is not None:
                while not self._queue.empty():
                    await asyncio.sleep(0.01)
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer
        await self.redis.aclose()
