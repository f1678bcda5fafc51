"""Run the real progress server (``aiecs serve``) in a subprocess, and talk to it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiecs_worker.server.tokens import issue_token

from tests.support.events import wait_until  # noqa: F401 - re-exported for the server tests
from tests.support.redis_server import free_port

SECRET = "test-secret-" + "x" * 40
ALLOWED_ORIGIN = "http://allowed.example:3000"


def uid(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class ServerProcess:
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    secret: str = SECRET
    log_level: str = "info"
    proc: subprocess.Popen | None = None
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.mkstemp(prefix="aiecs-server-", suffix=".log")[1])
    )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CELERY_BROKER_URL=self.redis_url, REDIS_URL=self.redis_url,
            AIECS_SECRET_KEY=self.secret, CORS_ALLOWED_ORIGINS=ALLOWED_ORIGIN,
            AIECS_HEALTH_INTERVAL="0.25", PYTHONUNBUFFERED="1",
        )
        if not self.secret:  # no signing key at all (dev mode, or the refusal test)
            env.pop("AIECS_SECRET_KEY")
        env.update(self.env)
        return env

    def start(self, timeout: float = 60.0, wait_healthy: bool = True) -> ServerProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiecs_worker.cli", "serve", "--port", str(self.port),
             "--log-level", self.log_level],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.environ(),
            start_new_session=True,
        )
        if wait_healthy:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, body = self.http("GET", "/healthz")
                last = body
                if status == 200:
                    return body
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise RuntimeError(f"server not healthy within {timeout}s: {last}\n{self.log()}")

    def health(self) -> tuple[int, dict[str, Any]]:
        return self.http("GET", "/healthz")

    def token(self, user_id: str, ttl: float = 600) -> str:
        return issue_token(user_id, self.secret, ttl)

    def http(self, method: str, path: str, body: Any = None, *, token: str | None = None,
             headers: dict[str, str] | None = None, raw: bytes | None = None,
             ) -> tuple[int, Any]:
        """One HTTP request; returns (status, parsed JSON body or text)."""
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, payload, ctype = resp.status, resp.read(), resp.headers.get(
                    "content-type", "")
                self.last_headers = dict(resp.headers)
        except urllib.error.HTTPError as exc:
            status, payload, ctype = exc.code, exc.read(), exc.headers.get("content-type", "")
            self.last_headers = dict(exc.headers)
        if "json" in ctype:
            return status, json.loads(payload)
        return status, payload.decode(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


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
