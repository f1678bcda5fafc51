"""The Socket.IO side of the progress server: :class:`ProgressSocket` authenticates
connections, puts each in its user's room, replays a task's logged events on
``subscribe`` (:mod:`.replay`, within its limits), answers ``ping``, watches its pub/sub
listener and asks clients to ``resync`` when it was away.

The protocol and the client contract (seq order, replay and live overlap, gaps, resync,
``retry_after``) are in packages/worker/README.md, "Socket.IO" and its "Client
contract"; :class:`~aiecs_worker.cli.client.EventSequencer` implements the client's rule.
Hostile packets are handled by :mod:`.sio_guard`, the Redis pub/sub by :mod:`.pubsub`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import socketio
from pydantic import ValidationError

from ..ops import metrics
from ..settings import RedisTarget
from ..store.connection import async_client, cluster_addresses
from ..store.events import EVENT_NAME, user_room
from .admission import TOO_MANY_CONNECTIONS, SocketAdmission, SocketLimits
from .pubsub import ProbedRedisManager
from .replay import Refused, ReplayLimits, SubscribeRequest, replay, take_token
from .revocation import GEN_KEY, revoked_many
from .sio_guard import GuardedServer, SafeJson
from .tokens import DEFAULT_MAX_LIFETIME, Identity, TokenError, verify_token

__all__ = ["BATCH_EVENT", "ERROR_EVENT", "ProgressSocket"]

log = logging.getLogger("aiecs.server")

#: Event carrying a batch of replayed TaskEvents to one connection.
BATCH_EVENT = "task_events"
#: Event reporting a bad client message.
ERROR_EVENT = "request_error"
#: Event sent when a connection's token runs out (then the server disconnects it).
EXPIRED_EVENT = "session_expired"
#: Event asking every client to subscribe again (live events may have been missed).
RESYNC_EVENT = "resync"
#: Packets a connection may have queued (unsent) before a replay sends its next chunk.
_QUEUED_PACKETS_MAX = 2


@dataclass
class _UserSlots:
    streaming: asyncio.Semaphore
    in_flight: int = 0
    connections: int = 0


@dataclass
class _Connection:
    user_id: str
    user: _UserSlots
    identity: Identity
    eio_sid: str | None
    checked_gen: bytes | None  # revocation list generation it was last checked against
    streaming: asyncio.Semaphore
    tokens: float
    stamp: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    refusals: int = 0


class ProgressSocket:
    """The Socket.IO server of one process and its pub/sub health monitor."""

    def __init__(
        self,
        *,
        secret: str,
        redis_url: str | RedisTarget,
        channel: str,
        allowed_origins: list[str],
        max_message_bytes: int,
        health_interval: float = 2.0,
        limits: ReplayLimits | None = None,
        socket_limits: SocketLimits | None = None,
        max_token_lifetime: float = DEFAULT_MAX_LIFETIME,
        revocation_poll: float = 1.0,
    ):
        if not allowed_origins:  # an empty list turns Engine.IO's origin check off
            raise ValueError("allowed_origins must not be empty")
        self.secret = secret
        self.redis_url = redis_url
        self.channel = channel
        self.health_interval = health_interval
        self.limits = limits or ReplayLimits()
        self.socket_limits = socket_limits or SocketLimits()
        self.max_token_lifetime = max_token_lifetime
        self.revocation_poll = revocation_poll
        self.admission = SocketAdmission(self.socket_limits)
        self.manager = ProbedRedisManager(redis_url, channel)
        self.sio = GuardedServer(
            async_mode="asgi",
            client_manager=self.manager,
            cors_allowed_origins=list(allowed_origins),
            cors_credentials=False,
            max_http_buffer_size=max_message_bytes,
            logger=False,
            engineio_logger=False,
            json=SafeJson,  # client packets: depth-checked before json.loads recurses
        )
        self.sio.on_bad_packet = self._on_bad_packet
        self.sio.admission = self.admission
        # The manager borrowed SafeJson; what it reads is the workers' events (trusted,
        # and a deep operation result must not be dropped), so it keeps the plain module.
        self.manager.json = json
        self._connections: dict[str, _Connection] = {}
        self._users: dict[str, _UserSlots] = {}
        self.redis = None  # redis.asyncio client for the log, set by start()
        self._expiry: dict[str, asyncio.Task] = {}
        self._monitor: asyncio.Task | None = None
        self._revocations: asyncio.Task | None = None
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

        self.redis = async_client(
            self.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        if self.manager.nodes is not None:  # a Redis Cluster: the nodes it lists now
            self.manager.nodes.known = lambda: cluster_addresses(self.redis)
        # Start the pub/sub listener now rather than at the first connection, so that
        # /healthz reflects it from the start.
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self.manager.initialize()
        self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())
        self._revocations = asyncio.get_running_loop().create_task(self._revocation_loop())

    async def stop(self) -> None:
        self.admission.stop()
        for loop_task in (self._monitor, self._revocations):
            if loop_task is not None:
                loop_task.cancel()
                await asyncio.gather(loop_task, return_exceptions=True)
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

    async def _revocation_loop(self) -> None:
        """Disconnect the sockets whose token (or user) was revoked: poll the revocation
        list's generation every AIECS_REVOCATION_POLL seconds; when it changed, check
        every connection of this process (one pipelined round trip)."""
        while True:
            await asyncio.sleep(self.revocation_poll)
            try:
                gen = await self.redis.get(GEN_KEY)
                conns = [(sid, c) for sid, c in self._connections.items()
                         if gen is not None and c.checked_gen != gen]
                if not conns:
                    continue
                gen, reasons = await revoked_many(self.redis,
                                                  [c.identity for _, c in conns])
                for (sid, conn), reason in zip(conns, reasons, strict=True):
                    conn.checked_gen = gen
                    if reason is not None:
                        log.info("disconnecting a connection of user %s: %s",
                                 conn.user_id, reason)
                        self.sio.start_background_task(self._end_session, sid, reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: try again next time
                log.warning("revocation check failed: %s", exc)

    async def _end_session(self, sid: str, reason: str) -> None:
        await self.sio.emit(EXPIRED_EVENT, {"message": reason}, to=sid, ignore_queue=True)
        await self.sio.disconnect(sid, ignore_queue=True)

    def _restart_listener(self) -> None:
        thread = getattr(self.manager, "thread", None)
        if thread is not None and not thread.done():
            thread.cancel()
        self.manager.connected = False
        self.manager.thread = self.sio.start_background_task(self.manager._thread)
        self._listener_restarts += 1
        metrics.listener_restarted()

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
            identity = verify_token(token, self.secret, max_lifetime=self.max_token_lifetime)
        except TokenError as exc:
            # Raising (not returning) refuses the connection: python-socketio accepts a
            # connection whose handler returns None.
            raise socketio.exceptions.ConnectionRefusedError(
                str(exc), {"type": "unauthorized", "message": str(exc)}
            ) from None
        try:
            gen, (reason,) = await revoked_many(self.redis, [identity])
        except Exception as exc:  # noqa: BLE001 - fail closed: the list cannot be read
            log.warning("revocation list unreadable, refusing a connection: %s", exc)
            message = "the server cannot check tokens right now; connect again shortly"
            raise socketio.exceptions.ConnectionRefusedError(
                message, {"type": "unavailable", "message": message}) from None
        if reason is not None:
            raise socketio.exceptions.ConnectionRefusedError(
                reason, {"type": "unauthorized", "message": reason})
        # no await from the cap check to the count: concurrent connects cannot both pass
        user = self._users.get(identity.user_id)
        cap = self.socket_limits.per_user
        if user is not None and user.connections >= cap:
            message = (f"too many connections for this user (limit {cap} per server "
                       "process); close one and connect again")
            log.warning("refused a connection of user %s: %d open (limit %d)",
                        identity.user_id, user.connections, cap)
            raise socketio.exceptions.ConnectionRefusedError(
                message, {"type": TOO_MANY_CONNECTIONS, "message": message})
        if user is None:
            user = self._users[identity.user_id] = _UserSlots(
                asyncio.Semaphore(self.limits.user_concurrency))
        user.connections += 1
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        self._connections[sid] = _Connection(
            identity.user_id, user, identity, eio_sid, gen,
            asyncio.Semaphore(self.limits.concurrency), tokens=float(self.limits.burst))
        if eio_sid is not None:
            self.admission.authenticated(eio_sid)
        await self.sio.save_session(
            sid, {"user_id": identity.user_id, "expires_at": identity.expires_at}
        )
        await self.sio.enter_room(sid, user_room(identity.user_id))
        delay = identity.expires_at - time.time()
        self._expiry[sid] = asyncio.get_running_loop().create_task(self._expire(sid, delay))
        metrics.socket_connected(1)

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
        conn = self._connections.pop(sid, None)
        if conn is not None:
            conn.user.connections -= 1
            self._forget_user(conn)
            metrics.socket_connected(-1)
            if conn.eio_sid is not None:  # the session stays: it must authenticate again
                eio_sid = conn.eio_sid
                self.admission.rearm(
                    eio_sid, lambda: self.sio._close_unauthenticated(eio_sid))

    def _forget_user(self, conn: _Connection) -> None:
        user = conn.user
        if (user.connections <= 0 and user.in_flight <= 0
                and self._users.get(conn.user_id) is user):
            del self._users[conn.user_id]

    async def _user(self, sid: str) -> str | None:
        try:
            session = await self.sio.get_session(sid)
        except KeyError:
            return None
        return session.get("user_id")

    async def _reject(self, sid: str, event: str, type_: str, message: str,
                      **extra: Any) -> dict[str, Any]:
        error = {"type": type_, "message": message, **extra}
        await self.sio.emit(ERROR_EVENT, {"event": event, "error": error}, to=sid,
                            ignore_queue=True)
        return {"ok": False, "error": error}

    async def on_ping(self, sid: str, *args: Any) -> dict[str, float]:
        payload = {"time": time.time()}
        await self.sio.emit("pong", payload, to=sid, ignore_queue=True)
        return payload

    async def _on_bad_packet(self, eio_sid: str, namespace: str,
                             reason: str) -> dict[str, Any]:
        """A packet python-socketio could not use (see :class:`GuardedServer`): one log
        line, ``request_error`` to the connection; returns the error for the ack."""
        reason = reason if len(reason) <= 300 else reason[:300] + "..."
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, namespace)
        log.info("refused a malformed message from connection %s: %s", sid or eio_sid, reason)
        error = {"type": "invalid_message", "message": reason}
        if sid is not None:
            await self.sio.emit(ERROR_EVENT, {"event": None, "error": error}, to=sid,
                                ignore_queue=True)
        return error

    async def on_unknown(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        name = event if len(event) <= 64 else event[:64] + "..."
        return await self._reject(
            sid, name, "unknown_event",
            f"unknown event {name!r}; this server handles: subscribe, ping",
        )

    async def on_subscribe(self, sid: str, data: Any = None, *extra: Any) -> dict[str, Any]:
        user_id = await self._user(sid)
        conn = self._connections.get(sid)
        if user_id is None or conn is None:  # not a connected client; fail closed anyway
            return await self._reject(sid, "subscribe", "unauthorized", "not authenticated")
        try:
            take_token(conn, self.limits)
        except Refused as exc:
            return await self._refuse(sid, conn, exc)
        try:
            if extra:
                raise ValueError("subscribe takes one object argument")
            req = SubscribeRequest.model_validate(data)
        except (ValidationError, ValueError) as exc:
            return await self._reject(sid, "subscribe", "invalid_request", _describe(exc))
        limits = self.limits
        if conn.in_flight >= limits.backlog or conn.user.in_flight >= limits.user_backlog:
            whose = ("this connection" if conn.in_flight >= limits.backlog
                     else "this user's connections")
            return await self._refuse(sid, conn, Refused(
                "too_many_replays",
                f"too many subscribes in flight on {whose} (limit "
                f"{limits.backlog if whose == 'this connection' else limits.user_backlog}); "
                "subscribe again once earlier ones are acknowledged",
                retry_after=1.0))
        conn.refusals = 0
        conn.in_flight += 1
        conn.user.in_flight += 1
        try:
            # a connection's replays, and one user's, take turns (FIFO) beyond the limits
            async with conn.streaming, conn.user.streaming:
                if sid not in self._connections:  # gone while waiting
                    return {"ok": False, "error": {"type": "disconnected",
                                                   "message": "connection closed"}}
                return await replay(
                    self.redis, user_id, req, self.limits.chunk,
                    lambda events: self.sio.emit(
                        BATCH_EVENT, {"task_id": req.task_id, "events": events},
                        to=sid, ignore_queue=True),
                    lambda: self._drained(sid))
        except Exception as exc:  # noqa: BLE001 - Redis down: say so, keep the connection
            log.warning("replay of %s for a client failed: %s", req.task_id, exc)
            return await self._reject(
                sid, "subscribe", "unavailable",
                "the event log is unavailable right now; subscribe again shortly",
            )
        finally:
            conn.in_flight -= 1
            conn.user.in_flight -= 1
            self._forget_user(conn)

    async def _refuse(self, sid: str, conn: _Connection, exc: Refused) -> dict[str, Any]:
        conn.refusals += 1
        if conn.refusals == self.limits.refusals_max:
            log.warning("disconnecting a connection of user %s: %d subscribes in a row "
                        "refused (%s)", conn.user_id, conn.refusals, exc.type)
            error = {"type": exc.type, "message": exc.message, "retry_after": exc.retry_after}
            self.sio.start_background_task(self._kick, sid)
            return {"ok": False, "error": error}
        return await self._reject(sid, "subscribe", exc.type, exc.message,
                                  retry_after=exc.retry_after)

    async def _kick(self, sid: str) -> None:
        await asyncio.sleep(0)  # let the acknowledgement go out first
        await self.sio.emit(ERROR_EVENT, {"event": "subscribe", "error": {
            "type": "abusive", "message": "too many refused subscribes: disconnected"}},
            to=sid, ignore_queue=True)
        await self.sio.disconnect(sid, ignore_queue=True)

    def _send_queue(self, sid: str) -> Any:
        """The Engine.IO socket's outgoing queue of a connection (None when gone)."""
        try:
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
            sock = self.sio.eio.sockets.get(eio_sid)
        except Exception:  # noqa: BLE001 - internals moved: no backpressure, still chunked
            return False
        if sock is None or sock.closed:
            return None
        return getattr(sock, "queue", False)

    async def _drained(self, sid: str) -> bool:
        """Yield to the loop, then wait until the connection took what was sent (its queue
        holds at most a couple of packets): a slow or stalled reader holds its own replay,
        not the server's memory. False when the connection is gone."""
        await asyncio.sleep(0)
        while True:
            if sid not in self._connections:
                return False
            queue = self._send_queue(sid)
            if queue is None:
                return False
            if queue is False or queue.qsize() <= _QUEUED_PACKETS_MAX:
                return True
            await asyncio.sleep(0.005)

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
