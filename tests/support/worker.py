"""Start real ``celery -A aiecs_worker worker`` processes for tests, and stop them cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.factory import process_factory

#: The celery executable of the environment running the tests.
CELERY = str(Path(sys.executable).with_name("celery"))


@dataclass
class WorkerProcess:
    """One worker (its main process and, for prefork, its children)."""

    redis_url: str
    pool: str = "threads"
    concurrency: int = 8
    queues: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"w{uuid.uuid4().hex[:8]}")
    celery: str = CELERY
    extra_args: list[str] = field(default_factory=list)
    loglevel: str = "INFO"
    #: Celery worker features turned off; keep "heartbeat" for a monitor (Flower, health)
    without: tuple[str, ...] = ("gossip", "mingle", "heartbeat")
    proc: subprocess.Popen | None = None
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.mkstemp(prefix="aiecs-worker-", suffix=".log")[1])
    )

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(CELERY_BROKER_URL=self.redis_url, REDIS_URL=self.redis_url,
                   PYTHONUNBUFFERED="1")
        env.update(self.env)
        return env

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        cmd = [
            self.celery, "-A", "aiecs_worker", "worker",
            "--pool", self.pool, "--concurrency", str(self.concurrency),
            "--hostname", f"{self.name}@%h", "--loglevel", self.loglevel,
            *(f"--without-{feature}" for feature in self.without),
            *self.extra_args,
        ]
        if self.queues:
            cmd += ["--queues", self.queues]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.environ(),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log_path.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker did not become ready:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """PIDs of the pool's child processes (prefork)."""
        if self.proc is None:
            return []
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError):  # what is left of the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None


@pytest.fixture
def start_worker(aiecs_redis):
    """Factory: ``start_worker(pool="threads", concurrency=8, queues=None, env={},
    loglevel="INFO")``.

    Workers use the session's Redis (``aiecs_redis``) unless ``redis_url`` is given.
    """
    yield from process_factory(
        lambda **kwargs: WorkerProcess(**{"redis_url": aiecs_redis.url, **kwargs}),
        lambda worker: f"worker {worker.name}", 60,
        lambda worker: worker.log_path.unlink(missing_ok=True))


@pytest.fixture
def worker(start_worker):
    """One threads-pool worker on both queues."""
    return start_worker()
