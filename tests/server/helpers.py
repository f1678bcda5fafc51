"""Helpers of the progress server tests: unique user ids, an async ``wait_until``, and
:class:`Recorder`, a Socket.IO client that records what it receives (the server process
itself is :class:`tests.support.processes.ServerProcess`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from tests.support.events import wait_until  # noqa: F401 - re-exported for the server tests
from tests.support.processes import ServerProcess


def uid(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def async_wait_until(predicate, timeout: float = 20.0, interval: float = 0.02,
                           message: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if callable(message):
                message = message()
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        await asyncio.sleep(interval)


class Recorder:
    """A python-socketio client that records everything it receives, per event name, and
    applies task events with the client contract (EventSequencer per task)."""

    def __init__(self, server: ServerProcess, token: str | None, **client_kwargs):
        import socketio
        from aiecs_worker.cli.client import EventSequencer

        self.server = server
        self.token = token
        self.sio = socketio.AsyncClient(reconnection_delay=0.2, reconnection_delay_max=1,
                                        **client_kwargs)
        self.raw: list[tuple[str, Any]] = []
        self.applied: dict[str, list[dict[str, Any]]] = {}
        self.seqs: dict[str, EventSequencer] = {}
        self.connect_errors: list[Any] = []
        self.connects = 0
        self.subscribed: set[str] = set()
        self._Seq = EventSequencer

        def record(name):
            async def handler(*args):
                data = args[0] if args else None
                self.raw.append((name, data))
                if name == "task_event":
                    self._offer(data)
                elif name == "task_events":
                    for e in data["events"]:
                        self._offer(e)
                elif name == "resync":
                    for task_id in list(self.subscribed):
                        self.sio.start_background_task(self.subscribe, task_id)
            return handler

        for name in ("task_event", "task_events", "request_error", "pong", "session_expired",
                     "resync"):
            self.sio.on(name, record(name))

        @self.sio.on("connect")
        async def _connect():
            self.connects += 1
            for task_id in list(self.subscribed):
                self.sio.start_background_task(self.subscribe, task_id)

        @self.sio.on("connect_error")
        async def _connect_error(data):
            self.connect_errors.append(data)

    def _offer(self, event: dict[str, Any]) -> None:
        seq = self.seqs.setdefault(event["task_id"], self._Seq())
        self.applied.setdefault(event["task_id"], []).extend(seq.offer(event))

    async def connect(self, headers: dict[str, str] | None = None, transports=None,
                      auth: Any = "default"):
        if auth == "default":
            auth = {"token": self.token} if self.token is not None else None
        await self.sio.connect(self.server.url, auth=auth, headers=headers or {},
                               transports=transports or ["websocket"], wait_timeout=10)

    async def subscribe(self, task_id: str) -> dict[str, Any]:
        self.subscribed.add(task_id)
        seq = self.seqs.setdefault(task_id, self._Seq())
        ack = await self.sio.call("subscribe", {"task_id": task_id, "after_seq": seq.applied},
                                  timeout=20)
        if ack.get("ok"):
            self.applied.setdefault(task_id, []).extend(seq.skip_gap(ack["replayed_to"]))
        return ack

    def events(self, task_id: str) -> list[dict[str, Any]]:
        return self.applied.get(task_id, [])

    def live(self, name: str = "task_event") -> list[Any]:
        return [data for n, data in self.raw if n == name]

    async def close(self) -> None:
        await self.sio.disconnect()
        await self.sio.shutdown() if hasattr(self.sio, "shutdown") else None
