"""A real Flower process (``celery -A aiecs_worker flower``) for tests, and its HTTP API."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.redis_server import free_port
from tests.support.worker import CELERY


@dataclass
class FlowerProcess:
    """Flower bound to 127.0.0.1 on a free port, with basic authentication."""

    redis_url: str
    user: str = "ops"
    password: str = field(default_factory=lambda: os.urandom(8).hex())
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.mkstemp(prefix="aiecs-flower-", suffix=".log")[1])
    )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> FlowerProcess:
        env = dict(os.environ, CELERY_BROKER_URL=self.redis_url, REDIS_URL=self.redis_url)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [CELERY, "-A", "aiecs_worker", "flower", "--address=127.0.0.1",
             f"--port={self.port}", f"--basic-auth={self.user}:{self.password}"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower exited:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.get("/healthcheck", raw=True) == b"OK":
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"flower did not start:\n{self.log()}")
            time.sleep(0.1)

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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)
        self.proc = None
