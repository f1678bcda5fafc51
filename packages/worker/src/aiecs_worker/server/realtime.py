"""The Socket.IO side of the progress server: authentication, rooms, replay, heartbeat.

Client contract (the page, the CLI and any other client follow it):

1. Connect with ``auth={"token": TOKEN}`` (or an ``Authorization: Bearer`` header). A
   missing, malformed, wrongly signed or expired token is refused (``connect_error`` with
   ``data.type == "unauthorized"``). Once accepted, the connection is in its user's room
   and receives every event of that user's tasks as ``task_event`` (one TaskEvent).
2. For each task it shows, the client emits ``subscribe`` ``{"task_id", "after_seq"}``
   (``after_seq``: the last seq it applied, 0 for none) with an acknowledgement callback.
   The server replies with the logged events after ``after_seq`` as ``task_events``
   ``{"task_id", "events": [...]}`` batches, oldest first, then acknowledges with
   ``{"ok": true, "task_id", "replayed", "first_seq", "replayed_to", "last_seq", "gap",
   "exists", "steps"}`` (``steps``: status of each step of the task).
3. Live events and replayed events overlap. Per task the client keeps ``applied`` (the
   highest seq applied) and applies events in seq order: ``seq <= applied`` is a duplicate
   (dropped), ``seq == applied + 1`` is applied (then any buffered successors), a larger
   seq is held until the events before it arrive. Once the subscription is acknowledged,
   a hole below ``replayed_to`` is permanent (the log has later events but not those:
   trimmed by AIECS_EVENTS_MAXLEN, ``gap`` is then true): the client applies what it
   held past it.
4. After every reconnect, and whenever the server emits ``resync`` (its Redis pub/sub
   listener was away: Redis restarted or the connection dropped), the client subscribes
   again to each task it still tracks, with its ``applied``. A client also resubscribes
   when it has held events behind a hole for a second or two. Nothing published while it
   (or the listener) was away is lost: it is all in the log.

Errors in a client's messages (wrong types, unknown events) never close the connection:
the server emits ``request_error`` ``{"event", "error": {"type", "message"}}`` and, when the
client asked for an acknowledgement, answers ``{"ok": false, "error": ...}``. Messages
larger than ``AIECS_MAX_MESSAGE_BYTES`` close the connection (Engine.IO's limit).

``ping`` is answered with ``pong`` ``{"time": server_unix_time}`` (the specification's
heartbeat), and with the same payload as acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import socketio
from aiecs_core import ID_PATTERN
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..events import EVENT_NAME, TaskKeys, user_room
from .tokens import TokenError, verify_token

__all__ = ["BATCH_EVENT", "ERROR_EVENT", "ProbedRedisManager", "ProgressSocket"]

log = logging.getLogger("aiecs.server")

#: Event carrying a batch of replayed TaskEvents to one connection.
BATCH_EVENT = "task_events"
#: Event reporting a bad client message.
ERROR_EVENT = "request_error"
#: Event sent when a connection's token runs out (then the server disconnects it).
EXPIRED_EVENT = "session_expired"
#: Event asking every client to subscribe again (live events may have been missed).
RESYNC_EVENT = "resync"
REPLAY_BATCH = 200
_PROBE_PREFIX = b'{"method": "aiecs_probe", '


class SubscribeRequest(BaseModel):
    """Payload of ``subscribe``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task_id: str = Field(pattern=ID_PATTERN)
    after_seq: int = Field(default=0, ge=0)


class ProbedRedisManager(socketio.AsyncRedisManager):
    """An ``AsyncRedisManager`` whose pub/sub listener proves it is alive.

    The server periodically publishes a probe on the manager's channel; the listener
    swallows it and records when it arrived. A listener that stopped receiving (Redis
    gone, connection half-open, task dead) stops seeing probes, so ``/healthz`` can say so
    instead of reporting a silently dead listener as healthy.
    """

    def __init__(self, url: str, channel: str):
        super().__init__(
            url,
            channel=channel,
            redis_options={
                "socket_connect_timeout": 2,
                "socket_keepalive": True,
                "health_check_interval": 10,
            },
        )
        self.probe_heard: dict[str, float] = {}

    async def _listen(self):
        async for data in super()._listen():
            if isinstance(data, bytes) and data.startswith(_PROBE_PREFIX):
                try:
                    nonce = json.loads(data)["nonce"]
                except (ValueError, KeyError, TypeError):
                    continue
                self.probe_heard[nonce] = time.monotonic()
                if len(self.probe_heard) > 64:
                    for old in sorted(self.probe_heard, key=self.probe_heard.get)[:32]:
                        self.probe_heard.pop(old, None)
                continue
            yield data

    @staticmethod
    def probe_packet(nonce: str) -> bytes:
        return _PROBE_PREFIX + f'"nonce": {json.dumps(nonce)}}}'.encode()


class ProgressSocket:
    """The Socket.IO server of one process and its pub/sub health monitor."""

    def __init__(
        self,
        *,
        secret: str,
        redis_url: str,
        channel: str,
        allowed_origins: list[str],
        max_message_bytes: int,
        health_interval: float = 2.0,
    ):
        if not allowed_origins:  # an empty list turns Engine.IO's origin check off
            raise ValueError("allowed_origins must not be empty")
        self.secret = secret
        self.redis_url = redis_url
        self.channel = channel
        self.health_interval = health_interval
        self.manager = ProbedRedisManager(redis_url, channel)
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            client_manager=self.manager,
            cors_allowed_origins=list(allowed_origins),
            cors_credentials=False,
            max_http_buffer_size=max_message_bytes,
            logger=False,
            engineio_logger=False,
        )
        self.redis = None  # redis.asyncio client for the log, set by start()
        self._expiry: dict[str, asyncio.Task] = {}
        self._monitor: asyncio.Task | None = None
        self._run_id: str | None = None
        self._listener_ok = False
        #: how long a probe may take to come back before the listener counts as deaf
        self._probe_timeout = max(1.0, health_interval)
        self._stale_after = 2 * health_interval + self._probe_timeout + 1
        self._need_resync = False
        self._resyncs = 0
        self._last_roundtrip: float | None = None
        self._listener_restarts = 0
        self._redis_ok = False
        self._register()

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(
            self.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        # Start the pub/sub listener now rather than at the first connection, so that
        # /healthz reflects it from the start.
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self.manager.initialize()
        self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        for task in self._expiry.values():
            task.cancel()
        thread = getattr(self.manager, "thread", None)
        if isinstance(thread, asyncio.Task):
            thread.cancel()
            await asyncio.gather(thread, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()

    # -- health -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Whether Redis answers and the pub/sub listener received the latest probes."""
        now = time.monotonic()
        age = None if self._last_roundtrip is None else round(now - self._last_roundtrip, 3)
        # the latest probe was heard, recently (a stale success says nothing after an outage)
        listening = self._listener_ok and age is not None and age <= self._stale_after
        thread = getattr(self.manager, "thread", None)
        return {
            "redis": self._redis_ok,
            "pubsub_listener": listening,
            "pubsub_last_probe_age": age,
            "listener_task_alive": bool(thread is not None and not thread.done()),
            "listener_restarts": self._listener_restarts,
            "resyncs": self._resyncs,
            "connections": len(self.sio.eio.sockets),
        }

    async def _monitor_loop(self) -> None:
        """Probe the listener every interval; restart it when it is dead or deaf; ask the
        clients to resubscribe when live events may have been missed."""
        deaf_since: float | None = None
        while True:
            try:
                heard_fresh = await self._probe_once()
                now = time.monotonic()
                heard = self._last_roundtrip is not None and (
                    now - self._last_roundtrip <= self._stale_after
                )
                if not heard_fresh:
                    self._need_resync = True
                thread = getattr(self.manager, "thread", None)
                if thread is not None and thread.done():
                    log.error("pub/sub listener stopped; restarting it")
                    self._restart_listener()
                    deaf_since = None
                elif heard or not self._redis_ok:
                    deaf_since = None
                else:
                    # Redis answers but the listener hears nothing: reconnect it.
                    deaf_since = deaf_since or now
                    if now - deaf_since > 5 * self.health_interval + 2:
                        log.error("pub/sub listener hears no probes while Redis answers; "
                                  "restarting it")
                        self._restart_listener()
                        deaf_since = None
                if heard_fresh and self._need_resync:
                    self._need_resync = False
                    self._resyncs += 1
                    # Live events published while the listener was away are only in the
                    # logs: every connection resubscribes with what it has applied.
                    log.info("pub/sub listener back: asking clients to resubscribe")
                    await self.sio.emit(RESYNC_EVENT, {"reason": "pubsub_reconnected"},
                                        ignore_queue=True)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the monitor must outlive anything
                log.exception("health monitor error")
            await asyncio.sleep(self.health_interval)

    async def _probe_once(self) -> bool:
        """Publish a probe; True when the listener heard it (and Redis did not restart)."""
        nonce = uuid.uuid4().hex
        try:
            run_id = (await self.redis.info("server")).get("run_id")
            await self.redis.publish(self.channel, self.manager.probe_packet(nonce))
        except Exception as exc:  # noqa: BLE001
            if self._redis_ok:
                log.warning("Redis unreachable from the progress server: %s", exc)
            self._redis_ok = False
            self._listener_ok = False
            return False
        if not self._redis_ok:
            log.info("Redis reachable")
        self._redis_ok = True
        restarted = self._run_id is not None and run_id != self._run_id
        if restarted:
            log.warning("Redis restarted (run_id changed)")
        self._run_id = run_id
        if restarted:
            self._listener_ok = False
        # a healthy listener hears it within milliseconds
        deadline = time.monotonic() + self._probe_timeout
        while nonce not in self.manager.probe_heard:
            if time.monotonic() > deadline:
                if self._listener_ok:
                    log.warning("pub/sub listener missed a probe")
                self._listener_ok = False
                return False
            await asyncio.sleep(0.01)
        self._last_roundtrip = self.manager.probe_heard[nonce]
        self._listener_ok = True
        return not restarted

    def _restart_listener(self) -> None:
        thread = getattr(self.manager, "thread", None)
        if thread is not None and not thread.done():
            thread.cancel()
        self.manager.connected = False
        self.manager.thread = self.sio.start_background_task(self.manager._thread)
        self._listener_restarts += 1

    # -- handlers ---------------------------------------------------------------------------
    def _register(self) -> None:
        sio = self.sio
        sio.on("connect", self.on_connect)
        sio.on("disconnect", self.on_disconnect)
        sio.on("subscribe", self.on_subscribe)
        sio.on("ping", self.on_ping)
        sio.on("*", self.on_unknown)

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        token = None
        if isinstance(auth, dict):
            token = auth.get("token")
        elif isinstance(auth, str):
            token = auth
        if token is None:
            header = environ.get("HTTP_AUTHORIZATION", "")
            if header[:7].lower() == "bearer ":
                token = header[7:].strip()
        try:
            identity = verify_token(token, self.secret)
        except TokenError as exc:
            # Raising (not returning) refuses the connection: python-socketio accepts a
            # connection whose handler returns None.
            raise socketio.exceptions.ConnectionRefusedError(
                str(exc), {"type": "unauthorized", "message": str(exc)}
            ) from None
        await self.sio.save_session(
            sid, {"user_id": identity.user_id, "expires_at": identity.expires_at}
        )
        await self.sio.enter_room(sid, user_room(identity.user_id))
        delay = identity.expires_at - time.time()
        self._expiry[sid] = asyncio.get_running_loop().create_task(self._expire(sid, delay))

    async def _expire(self, sid: str, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))
        self._expiry.pop(sid, None)
        await self.sio.emit(
            EXPIRED_EVENT, {"message": "token expired"}, to=sid, ignore_queue=True
        )
        await self.sio.disconnect(sid, ignore_queue=True)

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        task = self._expiry.pop(sid, None)
        if task is not None:
            task.cancel()

    async def _user(self, sid: str) -> str | None:
        try:
            session = await self.sio.get_session(sid)
        except KeyError:
            return None
        return session.get("user_id")

    async def _reject(self, sid: str, event: str, type_: str, message: str) -> dict[str, Any]:
        error = {"type": type_, "message": message}
        await self.sio.emit(ERROR_EVENT, {"event": event, "error": error}, to=sid,
                            ignore_queue=True)
        return {"ok": False, "error": error}

    async def on_ping(self, sid: str, *args: Any) -> dict[str, float]:
        payload = {"time": time.time()}
        await self.sio.emit("pong", payload, to=sid, ignore_queue=True)
        return payload

    async def on_unknown(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        name = event if len(event) <= 64 else event[:64] + "..."
        return await self._reject(
            sid, name, "unknown_event",
            f"unknown event {name!r}; this server handles: subscribe, ping",
        )

    async def on_subscribe(self, sid: str, data: Any = None, *extra: Any) -> dict[str, Any]:
        user_id = await self._user(sid)
        if user_id is None:  # cannot happen for a connected client; fail closed anyway
            return await self._reject(sid, "subscribe", "unauthorized", "not authenticated")
        try:
            if extra:
                raise ValueError("subscribe takes one object argument")
            req = SubscribeRequest.model_validate(data)
        except (ValidationError, ValueError) as exc:
            return await self._reject(sid, "subscribe", "invalid_request", _describe(exc))
        try:
            return await self._replay(sid, user_id, req)
        except Exception as exc:  # noqa: BLE001 - Redis down: say so, keep the connection
            log.warning("replay of %s for a client failed: %s", req.task_id, exc)
            return await self._reject(
                sid, "subscribe", "unavailable",
                "the event log is unavailable right now; subscribe again shortly",
            )

    async def _replay(self, sid: str, user_id: str, req: SubscribeRequest) -> dict[str, Any]:
        from ..state import steps_key

        keys = TaskKeys(user_id, req.task_id)
        after = req.after_seq
        first: int | None = None
        replayed = 0
        while True:
            entries = await self.redis.xrange(keys.log, min=f"{after + 1}-0", max="+",
                                              count=REPLAY_BATCH)
            if not entries:
                break
            events = [json.loads(fields[b"e"]) for _, fields in entries]
            if first is None:
                first = events[0]["seq"]
            after = events[-1]["seq"]
            replayed += len(events)
            await self.sio.emit(BATCH_EVENT, {"task_id": req.task_id, "events": events},
                                to=sid, ignore_queue=True)
            if len(entries) < REPLAY_BATCH:
                break
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.seq)
            pipe.smembers(steps_key(user_id, req.task_id))
            last_seq_raw, steps_raw = await pipe.execute()
        steps = sorted(int(s) for s in steps_raw)
        statuses: dict[str, str | None] = {}
        if steps:
            async with self.redis.pipeline(transaction=False) as pipe:
                for step in steps:
                    pipe.hget(keys.state(step), "status")
                for step, status in zip(steps, await pipe.execute(), strict=True):
                    statuses[str(step)] = status.decode() if status else None
        last_seq = max(after, int(last_seq_raw or 0))
        return {
            "ok": True,
            "task_id": req.task_id,
            "after_seq": req.after_seq,
            "replayed": replayed,
            "first_seq": first,
            "replayed_to": after,
            "last_seq": last_seq,
            "gap": first is not None and first > req.after_seq + 1,
            "exists": bool(last_seq or steps),
            "steps": statuses,
        }


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"]) or "payload"
            parts.append(f"{loc}: {err['msg']}")
        return "; ".join(parts)
    return str(exc)


# re-exported for clients written against this module
__all__ += ["EVENT_NAME", "EXPIRED_EVENT", "RESYNC_EVENT", "SubscribeRequest"]
