"""Child processes of the tests: real ``celery worker``, ``celery beat``, ``celery flower``
and ``aiecs serve`` processes, started in their own session (so stopping one stops its
children too), logging to a temporary file, stopped and cleaned up by the fixtures.

:class:`ChildProcess` is what they share (environment, log, start, stop, kill); each kind
is a thin subclass naming its command and when it is ready. :func:`process_factory` is the
body of the factory fixtures (``start_worker``, ``start_beat``, ``start_server``): every
process started is stopped after the test and the tail of its log printed (pytest shows
it only when the test failed); with ``AIECS_TEST_LOG_DIR`` set, each whole log is kept
there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.support.redis_server import free_port

__all__ = ["ALLOWED_ORIGIN", "CELERY", "IN_PROCESS_POOLS", "SECRET", "BeatProcess",
           "ChildProcess", "FlowerProcess", "RecorderProcess", "ServerProcess",
           "WorkerProcess", "in_process_pools", "process_factory", "report", "start_beat",
           "start_recorder", "start_worker", "worker", "worker_pool"]

#: The celery executable of the environment running the tests.
CELERY = str(Path(sys.executable).with_name("celery"))
#: The signing key of the test servers, and the one extra origin they allow.
SECRET = "test-secret-" + "x" * 40
ALLOWED_ORIGIN = "http://allowed.example:3000"


def _log_file(kind: str) -> Path:
    return Path(tempfile.mkstemp(prefix=f"aiecs-{kind}-", suffix=".log")[1])


@dataclass
class ChildProcess:
    """One child process on ``redis_url`` (broker and state), its output in ``log_path``."""

    kind: ClassVar[str] = "process"
    #: seconds the process has to stop after SIGTERM before its group is SIGKILLed
    stop_timeout: ClassVar[float] = 15.0

    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path = None  # type: ignore[assignment] - set in __post_init__

    def __post_init__(self) -> None:
        if self.log_path is None:
            self.log_path = _log_file(self.kind)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(CELERY_BROKER_URL=self.redis_url, REDIS_URL=self.redis_url,
                   PYTHONUNBUFFERED="1")
        env.update(self.env)
        return env

    def spawn(self) -> None:
        """Start the process in a session of its own, its output to the log file."""
        if self.proc is not None:
            # a second spawn would orphan the first process (nothing would stop it)
            raise RuntimeError(f"{self.kind} already started (stop() it first)")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(), stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.environ(),
                                     start_new_session=True)

    def start(self):
        self.spawn()
        return self

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready()`` until it holds; RuntimeError (with the log) when the process
        exits or ``timeout`` passes first (the process is then stopped)."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc is not None else None
                raise RuntimeError(f"{self.kind} exited with {code}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} did not {what} within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group: nothing released, nothing cleaned up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the group and wait; SIGKILL what is left of it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
        with contextlib.suppress(ProcessLookupError):  # what is left of the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None

    def close(self) -> None:
        """Stop, and remove the log file."""
        self.stop()
        self.log_path.unlink(missing_ok=True)

    def describe(self) -> str:
        return f"{self.kind} {self.proc.pid if self.proc else ''}".strip()


def report(proc: ChildProcess, lines: int, index: int = 0) -> None:
    """Print the tail of ``proc``'s log; keep the whole log in ``AIECS_TEST_LOG_DIR``."""
    text = proc.log()
    print(f"--- log of {proc.describe()} (last {lines} lines) ---")
    print("\n".join(text.splitlines()[-lines:]))
    keep = os.environ.get("AIECS_TEST_LOG_DIR")  # the whole log, for a post-mortem
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", proc.describe())
        Path(keep, f"{os.getpid()}-{index}-{name}.log").write_text(text)


def process_factory(make: Callable[..., ChildProcess], lines: int
                    ) -> Iterator[Callable[..., Any]]:
    """``yield from`` this in a fixture: ``start(**kwargs)`` builds a process with
    ``make(**kwargs)`` and starts it; after the test each is stopped, reported and its
    log file removed."""
    started: list[ChildProcess] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        proc = make(*args, **kwargs)
        started.append(proc)
        return proc.start()

    yield start
    for index, proc in enumerate(started):
        proc.stop()
        report(proc, lines, index)
        proc.close()


# -- the kinds ---------------------------------------------------------------------------------
@dataclass
class WorkerProcess(ChildProcess):
    """One ``celery -A aiecs_worker worker`` (its main process and, for prefork, its
    children); ``start()`` waits until it is ready."""

    kind: ClassVar[str] = "worker"
    stop_timeout: ClassVar[float] = 20.0

    pool: str = "threads"
    concurrency: int = 8
    queues: str | None = None
    name: str = field(default_factory=lambda: f"w{uuid.uuid4().hex[:8]}")
    celery: str = CELERY
    extra_args: list[str] = field(default_factory=list)
    loglevel: str = "INFO"
    #: Celery worker features turned off; keep "heartbeat" for a monitor (Flower, health)
    without: tuple[str, ...] = ("gossip", "mingle", "heartbeat")

    def command(self) -> list[str]:
        # "asyncio": aiecs's pool (`aiecs worker --pool asyncio`), Celery's custom pool
        pool = "custom" if self.pool == "asyncio" else self.pool
        cmd = [
            self.celery, "-A", "aiecs_worker", "worker",
            "--pool", pool, "--concurrency", str(self.concurrency),
            "--hostname", f"{self.name}@%h", "--loglevel", self.loglevel,
            *(f"--without-{feature}" for feature in self.without),
            *self.extra_args,
        ]
        return cmd + (["--queues", self.queues] if self.queues else [])

    def environ(self) -> dict[str, str]:
        env = super().environ()
        if self.pool == "asyncio":
            from aiecs_worker.cli.worker import ASYNCIO_POOL, CUSTOM_POOL_ENV

            env[CUSTOM_POOL_ENV] = ASYNCIO_POOL
        return env

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        self.spawn()
        self.wait_for(lambda: b" ready." in self.log_path.read_bytes(), timeout,
                      "become ready")
        return self

    def children(self) -> list[int]:
        """PIDs of the pool's child processes (prefork)."""
        if self.proc is None:
            return []
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def describe(self) -> str:
        return f"worker {self.name}"


@dataclass
class RecorderProcess(ChildProcess):
    """One ``aiecs recorder`` on ``database_url``; ``start()`` waits until it records."""

    kind: ClassVar[str] = "recorder"

    database_url: str = ""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "aiecs_worker.cli", "recorder", "--database-url",
                self.database_url]

    def start(self, timeout: float = 60.0) -> RecorderProcess:
        self.spawn()
        self.wait_for(lambda: b"recording into" in self.log_path.read_bytes(), timeout,
                      "start recording")
        return self


@dataclass
class BeatProcess(ChildProcess):
    """One ``celery -A aiecs_worker beat`` with the app's scheduler; ``start()`` does not
    wait for its lock (``wait_lock()`` does)."""

    kind: ClassVar[str] = "beat"

    #: beat's longest sleep; its lock expires 5 times this after it stopped renewing it
    max_interval: int = 1

    def command(self) -> list[str]:
        return [CELERY, "-A", "aiecs_worker", "beat", "--loglevel", "INFO",
                "--max-interval", str(self.max_interval)]

    def has_lock(self) -> bool:
        return "beat: Acquired lock" in self.log()

    def wait_lock(self, timeout: float = 60.0) -> BeatProcess:
        self.wait_for(self.has_lock, timeout, "take the lock")
        return self


@dataclass
class FlowerProcess(ChildProcess):
    """Flower bound to 127.0.0.1 on a free port, with basic authentication, and its API."""

    kind: ClassVar[str] = "flower"
    stop_timeout: ClassVar[float] = 10.0

    user: str = "ops"
    password: str = field(default_factory=lambda: os.urandom(8).hex())
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [CELERY, "-A", "aiecs_worker", "flower", "--address=127.0.0.1",
                f"--port={self.port}", f"--basic-auth={self.user}:{self.password}"]

    def start(self, timeout: float = 60.0) -> FlowerProcess:
        self.spawn()
        self.wait_for(self._answers, timeout, "start")
        return self

    def _answers(self) -> bool:
        with contextlib.suppress(OSError):
            return self.get("/healthcheck", raw=True) == b"OK"
        return False

    def get(self, path: str, *, auth: bool = True, raw: bool = False) -> Any:
        """GET ``path``; the decoded JSON (``raw``: the bytes). HTTPError on 4xx/5xx."""
        request = urllib.request.Request(self.url + path)
        if auth:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return body if raw else json.loads(body)

    def status(self, path: str, *, auth: bool = True) -> int:
        try:
            self.get(path, auth=auth, raw=True)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200


@dataclass
class ServerProcess(ChildProcess):
    """The progress server, ``aiecs serve``, on a free port; ``start()`` waits until its
    ``/healthz`` answers 200 (unless ``wait_healthy=False``)."""

    kind: ClassVar[str] = "server"

    port: int = field(default_factory=free_port)
    secret: str = SECRET
    log_level: str = "info"

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

    def command(self) -> list[str]:
        return [sys.executable, "-m", "aiecs_worker.cli", "serve", "--port", str(self.port),
                "--log-level", self.log_level]

    def start(self, timeout: float = 60.0, wait_healthy: bool = True) -> ServerProcess:
        for attempt in range(4):
            self.spawn()
            if not wait_healthy:
                return self
            try:
                self.wait_healthy(timeout)
                return self
            except RuntimeError:
                # the port was taken between free_port() and the server's bind: another one
                if attempt == 3 or "address already in use" not in self.log():
                    raise
                self.stop()
                self.port = free_port()
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
        # deferred: tests/conftest.py imports this module, and importing aiecs_worker
        # there would configure its Celery app before the session fixtures set REDIS_URL
        from aiecs_worker.server.tokens import issue_token

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

    def describe(self) -> str:
        return f"server on port {self.port}"


# -- fixtures ----------------------------------------------------------------------------------
#: The pools whose consumer runs in the worker's own process: a test of a guarantee they
#: must both keep runs under each (``@in_process_pools``).
IN_PROCESS_POOLS = ("threads", "asyncio")
#: Runs a test once per in-process pool: its workers started without a ``pool``
#: (``start_worker()``, ``worker``) use that pool (``--pool asyncio`` is aiecs's own).
in_process_pools = pytest.mark.parametrize("worker_pool", IN_PROCESS_POOLS)


@pytest.fixture
def worker_pool() -> str:
    """The pool of the workers a test starts without naming one: ``threads`` unless the
    test is parametrized over it (``@in_process_pools``)."""
    return "threads"


@pytest.fixture
def start_worker(aiecs_redis, worker_pool):
    """Factory: ``start_worker(pool=worker_pool, concurrency=8, queues=None, env={},
    loglevel="INFO")``.

    Workers use the session's Redis (``aiecs_redis``) unless ``redis_url`` is given.
    """
    yield from process_factory(
        lambda **kwargs: WorkerProcess(**{"redis_url": aiecs_redis.url, "pool": worker_pool,
                                          **kwargs}), 60)


@pytest.fixture
def worker(start_worker):
    """One worker on both queues (the threads pool unless ``worker_pool`` says)."""
    return start_worker()


@pytest.fixture
def start_recorder(aiecs_redis):
    """Factory: ``start_recorder(database_url=URL, env={})`` starts an ``aiecs recorder``
    on the session's Redis; all are stopped after the test."""
    yield from process_factory(
        lambda **kwargs: RecorderProcess(**{"redis_url": aiecs_redis.url, **kwargs}), 40)


@pytest.fixture
def start_server():
    """Factory for servers of a test's own (``start_server(redis_url, env={...})``); all
    are stopped after the test."""
    yield from process_factory(
        lambda redis_url, **kwargs: ServerProcess(redis_url=redis_url, **kwargs), 80)


@pytest.fixture
def start_beat(aiecs_redis):
    """Factory: ``start_beat(max_interval=1, env={})`` starts a beat on the session's
    Redis (not waiting for its lock: ``.wait_lock()``); all are stopped after the test."""
    yield from process_factory(
        lambda **kwargs: BeatProcess(**{"redis_url": aiecs_redis.url, **kwargs}), 40)
