"""Start real ``celery -A aiecs_worker beat`` processes for tests, and stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.factory import process_factory
from tests.support.worker import CELERY


@dataclass
class BeatProcess:
    """One beat, with the app's configured scheduler (aiecs_worker.beat:Scheduler)."""

    redis_url: str
    #: beat's longest sleep; its lock expires 5 times this after it stopped renewing it
    max_interval: int = 1
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.mkstemp(prefix="aiecs-beat-", suffix=".log")[1])
    )

    def start(self) -> BeatProcess:
        env = dict(os.environ)
        env.update(CELERY_BROKER_URL=self.redis_url, REDIS_URL=self.redis_url,
                   PYTHONUNBUFFERED="1", **self.env)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [CELERY, "-A", "aiecs_worker", "beat", "--loglevel", "INFO",
             "--max-interval", str(self.max_interval)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def has_lock(self) -> bool:
        return "beat: Acquired lock" in self.log()

    def wait_lock(self, timeout: float = 60.0) -> BeatProcess:
        deadline = time.monotonic() + timeout
        while not self.has_lock():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"beat exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"beat did not take the lock:\n{self.log()}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: no lock released, nothing cleaned up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None


@pytest.fixture
def start_beat(aiecs_redis):
    """Factory: ``start_beat(max_interval=1, env={})`` starts a beat on the session's
    Redis (not waiting for its lock: ``.wait_lock()``); all are stopped after the test."""
    yield from process_factory(
        lambda **kwargs: BeatProcess(**{"redis_url": aiecs_redis.url, **kwargs}),
        lambda beat: f"beat {beat.proc and beat.proc.pid}", 40,
        lambda beat: beat.log_path.unlink(missing_ok=True))
