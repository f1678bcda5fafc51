"""A Python client of the progress server, following the client contract of
:mod:`aiecs_worker.server.realtime`: what ``aiecs watch``, ``aiecs submit --watch`` and the
other commands of :mod:`aiecs_worker.cli` use (the CLI's one HTTP client).

:class:`EventSequencer` is the ordering/de-duplication rule on its own (no I/O), so other
clients can reuse it. :class:`TaskWatcher` connects, subscribes with the last applied seq
after every (re)connect, and hands events to a callback in seq order, once each.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ApiClient", "ApiClientError", "EventSequencer", "TaskWatcher", "WatchError", "call",
           "stream_lines"]

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


class EventSequencer:
    """Applies one task's events in seq order, each exactly once.

    ``offer(event)`` returns the events now applicable, in order: nothing for a duplicate
    (``seq <= applied``), nothing for an early event (held until its predecessors arrive),
    the event plus any held successors otherwise. ``skip_gap(upto)`` gives up on holes
    that the log proved permanent (it replayed events up to ``upto`` but not those).
    """

    def __init__(self, applied: int = 0):
        self.applied = applied
        self._held: dict[int, dict[str, Any]] = {}

    def offer(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        seq = event.get("seq")
        if not isinstance(seq, int) or seq <= self.applied or seq in self._held:
            return []
        self._held[seq] = event
        return self._drain()

    def _drain(self) -> list[dict[str, Any]]:
        out = []
        while self.applied + 1 in self._held:
            self.applied += 1
            out.append(self._held.pop(self.applied))
        return out

    @property
    def waiting(self) -> bool:
        return bool(self._held)

    def skip_gap(self, upto: int) -> list[dict[str, Any]]:
        """Give up on holes below ``upto`` (the log had later events but not these)."""
        out: list[dict[str, Any]] = []
        while self._held and min(self._held) <= upto:
            self.applied = min(self._held) - 1
            out += self._drain()
        return out


class WatchError(Exception):
    """The watch could not go on (refused token, unknown task, server gone)."""


class ApiClientError(Exception):
    def __init__(self, status: int, type_: str, message: str):
        super().__init__(f"{status} {type_}: {message}")
        self.status = status
        self.type = type_
        self.message = message


class ApiClient:
    """The task API over HTTP (aiohttp)."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url.rstrip("/")
        self.token = token

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        import aiohttp  # deferred: only the commands that call the server need it

        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        timeout = aiohttp.ClientTimeout(total=30)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
                method, self.base_url + path, data=data, headers=headers
            ) as resp:
                text = await resp.text()
                try:
                    payload = json.loads(text) if text else None
                except ValueError:
                    payload = None
                if resp.status >= 400:
                    err = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
                    raise ApiClientError(resp.status, err.get("type", "http_error"),
                                         err.get("message", text[:200]))
                return payload
        except aiohttp.ClientConnectionError as exc:
            raise ApiClientError(0, "connection_error",
                                 f"cannot reach {self.base_url}: {exc}") from None


async def _stream(base_url: str, token: str, path: str, on_line: Callable[[bytes], None],
                  idle_timeout: float) -> None:
    import aiohttp  # deferred: only the commands that call the server need it

    url = base_url.rstrip("/") + path
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=idle_timeout)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            url, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            if resp.status >= 400:
                text = await resp.text()
                try:
                    err = json.loads(text).get("error", {})
                except (ValueError, AttributeError):
                    err = {}
                raise ApiClientError(resp.status, err.get("type", "http_error"),
                                     err.get("message", text[:200]))
            while line := await resp.content.readline():
                on_line(line)
    except aiohttp.ClientConnectionError as exc:
        raise ApiClientError(0, "connection_error", f"cannot reach {base_url}: {exc}") from None


def stream_lines(base_url: str, token: str, path: str, on_line: Callable[[bytes], None],
                 *, idle_timeout: float = 60) -> None:
    """GET ``path`` and hand each line of the answer to ``on_line`` as it arrives (an
    NDJSON export: constant memory, whatever its length); :class:`ApiClientError` for a
    refusal."""
    asyncio.run(_stream(base_url, token, path, on_line, idle_timeout))


def call(base_url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    """One request of the task API, synchronously (what the CLI's commands do): the
    answer's JSON, or :class:`ApiClientError`."""
    return asyncio.run(ApiClient(base_url, token).request(method, path, body))


@dataclass
class TaskWatcher:
    """Follows one task until ``step`` (default: its latest step) reaches a final status."""

    server_url: str
    token: str
    task_id: str
    on_event: Callable[[dict[str, Any]], None]
    step: int | None = None
    after_seq: int = 0
    #: follow until every one of these steps ended (a workflow), not one step
    all_steps: frozenset[int] | None = None
    reconnect_delay: float = 0.5
    final: dict[str, Any] | None = None
    reconnects: int = 0
    _seq: EventSequencer = field(init=False)
    _statuses: dict[int, str] = field(default_factory=dict, init=False)
    _gap_since: float | None = field(default=None, init=False)
    #: seconds events may wait behind a hole before the watcher subscribes again
    gap_timeout: float = 1.5

    def __post_init__(self) -> None:
        self._seq = EventSequencer(self.after_seq)

    def _apply(self, events: list[dict[str, Any]], done: asyncio.Event) -> None:
        self._gap_since = (self._gap_since or asyncio.get_running_loop().time()
                           ) if self._seq.waiting else None
        for event in events:
            self._statuses[event["step"]] = event["status"]
            self.on_event(event)
            if self._finished(event):
                self.final = event
                done.set()

    def _target_step(self) -> int | None:
        if self.step is not None:
            return self.step
        return max(self._statuses) if self._statuses else None

    def _finished(self, event: dict[str, Any]) -> bool:
        if self.all_steps:
            return event.get("type") == "status" and all(
                self._statuses.get(n) in TERMINAL for n in self.all_steps)
        return (
            event.get("type") == "status"
            and event.get("status") in TERMINAL
            and event.get("step") == self._target_step()
        )

    async def run(self, timeout: float | None = None) -> dict[str, Any]:
        """Watch until the final status; return the terminal event."""
        import socketio  # deferred: only watching needs it

        done = asyncio.Event()
        failure: list[str] = []
        sio = socketio.AsyncClient(reconnection=True, reconnection_delay=self.reconnect_delay,
                                   reconnection_delay_max=5)
        connected_once = False

        def offer(event: Any) -> None:
            if isinstance(event, dict) and event.get("task_id") == self.task_id:
                self._apply(self._seq.offer(event), done)

        async def subscribe() -> None:
            sent = self._seq.applied
            try:
                ack = await sio.call("subscribe", {"task_id": self.task_id,
                                                   "after_seq": sent}, timeout=30)
            except Exception as exc:  # noqa: BLE001 - disconnected meanwhile: reconnect resubscribes
                if sio.connected:
                    failure.append(f"subscribe failed: {exc}")
                    done.set()
                return
            if not ack.get("ok"):
                err = ack.get("error", {})
                if err.get("type") in ("unavailable", "too_many_replays", "rate_limited"):
                    await asyncio.sleep(min(float(err.get("retry_after") or 1), 30))
                    if sio.connected:
                        sio.start_background_task(subscribe)
                    return
                failure.append(f"subscribe refused: {err.get('message')}")
                done.set()
                return
            if ack.get("last_seq", 0) < sent:
                # ahead of the log (it was lost, e.g. Redis flushed): start over from it.
                # Compared with what was sent: live events applied while the subscribe
                # was answered are newer than the server's reading, not a lost log.
                self._seq = EventSequencer()
                sio.start_background_task(subscribe)
                return
            self._apply(self._seq.skip_gap(ack.get("replayed_to", 0)), done)
            for step, status in (ack.get("steps") or {}).items():
                self._statuses.setdefault(int(step), status or "pending")
            if not ack.get("exists"):
                failure.append(f"no task {self.task_id!r} for this user")
                done.set()
                return
            if self.all_steps and self.final is None and all(
                    self._statuses.get(n) in TERMINAL for n in self.all_steps):
                self.final = {"type": "status", "task_id": self.task_id, "seq": self._seq.applied,
                              "status": "ended"}
                done.set()
                return
            target = self._target_step()
            if target is not None and self._statuses.get(target) in TERMINAL and self.final is None:
                # final state known but its event is gone from the log (expired/trimmed)
                self.final = {"type": "status", "task_id": self.task_id, "step": target,
                              "status": self._statuses[target], "seq": self._seq.applied}
                done.set()

        @sio.on("connect")
        async def _connect() -> None:
            nonlocal connected_once
            if connected_once:
                self.reconnects += 1
            connected_once = True
            sio.start_background_task(subscribe)

        @sio.on("connect_error")
        async def _connect_error(data: Any) -> None:
            message = data.get("message") if isinstance(data, dict) else str(data)
            kind = (data.get("data") or {}).get("type") if isinstance(data, dict) else None
            if kind == "unauthorized" or "origin" in str(message):
                failure.append(f"connection refused: {message}")
                done.set()

        @sio.on("session_expired")
        async def _expired(data: Any) -> None:
            failure.append("token expired")
            done.set()

        sio.on("task_event", offer)

        @sio.on("resync")
        async def _resync(data: Any = None) -> None:
            sio.start_background_task(subscribe)

        async def gap_watch() -> None:
            loop = asyncio.get_running_loop()
            while not done.is_set():
                await asyncio.sleep(self.gap_timeout / 3)
                since = self._gap_since
                if since is not None and loop.time() - since > self.gap_timeout and sio.connected:
                    self._gap_since = loop.time()
                    await subscribe()

        @sio.on("task_events")
        async def _batch(data: Any) -> None:
            if isinstance(data, dict) and data.get("task_id") == self.task_id:
                for event in data.get("events") or []:
                    offer(event)

        try:
            try:
                await sio.connect(self.server_url, auth={"token": self.token},
                                  transports=["websocket"], wait_timeout=10)
            except socketio.exceptions.ConnectionError as exc:
                if failure:
                    raise WatchError(failure[0]) from None
                raise WatchError(f"cannot connect to {self.server_url}: {exc}") from None
            gaps = asyncio.get_running_loop().create_task(gap_watch())
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                raise WatchError(f"no final status within {timeout} s") from None
            finally:
                gaps.cancel()
        finally:
            await sio.disconnect()
        if failure and self.final is None:
            raise WatchError(failure[0])
        assert self.final is not None
        return self.final
