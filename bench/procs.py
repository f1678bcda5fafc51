"""Process management shared by every scenario: ports, Redis, workers, servers, CPU.

Every process the bench starts goes through :func:`spawn`: it gets its own process group
(``start_new_session``) and is registered, so :func:`cleanup` (run from ``finally`` blocks,
at exit and on SIGTERM/SIGINT) kills whole groups: prefork children, uvicorn, clients.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CELERY = str(Path(sys.executable).with_name("celery"))
TICK = os.sysconf("SC_CLK_TCK")

_live: list[subprocess.Popen] = []
_dirs: list[Path] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Settings inherited from the caller's shell (or a test session) never reach the bench's
#: processes: each run passes its own. (Celery prefers CELERY_BROKER_URL over an app's
#: ``broker`` argument, so one left over would point a run at another Redis.)
_FOREIGN = ("CELERY_", "REDIS_URL", "AIECS_", "OPENAI_", "XAI_", "VERTEX_", "GOOGLE_")


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    # the benchmark runs test/echo: the test services load only when asked for
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", AIECS_TEST_SERVICES="1")
    env.update(extra)
    return env


def tmpdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"aiecs-bench-{prefix}-"))
    _dirs.append(path)
    return path


def spawn(cmd: list[str], *, env: dict[str, str] | None = None, log: Path | None = None,
          stdin: int | None = None, stdout: int | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a new process group, registered for cleanup."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed by the OS
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env or base_env(), stdin=stdin,
                            stdout=stdout if stdout is not None else out, stderr=out,
                            start_new_session=True, text=stdout is not None)
    _live.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if proc in _live:
        _live.remove(proc)


def cleanup() -> None:
    """Stop everything still running and remove temporary directories."""
    for proc in reversed(list(_live)):
        stop(proc, timeout=5)
    for path in _dirs:
        shutil.rmtree(path, ignore_errors=True)
    _dirs.clear()


def install_signal_handlers() -> None:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt, so ``finally`` blocks run). Also
    drops inherited settings from this process (see ``_FOREIGN``)."""
    for key in [k for k in os.environ if k.startswith(_FOREIGN)]:
        del os.environ[key]

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    atexit.register(cleanup)


# -- CPU accounting ------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in process group ``pgid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields and int(fields[2]) == pgid:  # field 5: pgrp
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total / TICK


def cpu_of(procs: list[subprocess.Popen]) -> float:
    return sum(group_cpu(p.pid) for p in procs)


# -- Redis ---------------------------------------------------------------------------------------


@dataclass
class Redis:
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = spawn([binary, "--port", str(self.port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(tmpdir("redis")),
                           "--protected-mode", "no", "--maxclients", "10000"])
        import redis

        self.client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.02)

    def counters(self) -> dict[str, float]:
        """Commands (all, including those run inside Lua scripts), read events (request
        batches: one per round trip, a pipeline counts once) and Redis's CPU seconds."""
        stats = self.client.info("stats")
        commands = self.client.info("commandstats")
        return {
            "commands": sum(v["calls"] for v in commands.values()),
            "by_command": {k.removeprefix("cmdstat_"): v["calls"] for k, v in commands.items()},
            "reads": stats["total_reads_processed"],
            "processed": stats["total_commands_processed"],
            "cpu": group_cpu(self.proc.pid),
        }

    def close(self) -> None:
        self.client.close()
        stop(self.proc)


#: Commands and reads the bench's own ``counters()`` call adds (INFO stats + INFO commandstats).
COUNTER_OVERHEAD = {"commands": 2, "reads": 2, "processed": 2}


def delta(before: dict, after: dict) -> dict:
    out = {k: after[k] - before[k] - COUNTER_OVERHEAD.get(k, 0)
           for k in before if k != "by_command"}
    if "by_command" in after:
        was = before.get("by_command", {})
        out["by_command"] = {k: n - was.get(k, 0) for k, n in after["by_command"].items()
                             if n - was.get(k, 0) > 0}
        out["by_command"]["info"] = out["by_command"].get("info", 0) - 2
    return out


# -- Celery workers ------------------------------------------------------------------------------

AIECS_APP = "aiecs_worker"
ANCHOR_APP = "bench.anchor_app"
ARQ_APP = "bench.arq_app"
ARQ_ENV = ROOT / "bench" / "arq_env"


def arq_python() -> str:
    """bench/arq_env's interpreter (arq has its own locked project: it pins redis<6),
    synced on first use with ``uv sync --project bench/arq_env --locked``."""
    python = ARQ_ENV / ".venv" / "bin" / "python"
    if not python.exists():
        uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
        done = subprocess.run([uv, "sync", "--project", str(ARQ_ENV), "--locked"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0 or not python.exists():
            raise RuntimeError(f"could not sync bench/arq_env: {done.stderr[-1000:]}")
    return str(python)


@dataclass
class Worker:
    """One ``celery worker`` process (and its prefork children), aiecs or the anchor."""

    app: str
    redis_url: str
    pool: str = "threads"
    concurrency: int = 8
    env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"w{os.urandom(4).hex()}")
    proc: subprocess.Popen | None = None
    started: float = 0.0

    def start(self) -> Worker:
        queues = ["-Q", "fast_tasks"] if self.app == AIECS_APP else []
        self.log = tmpdir("worker") / "worker.log"
        env = base_env(CELERY_BROKER_URL=self.redis_url, REDIS_URL=self.redis_url, **self.env)
        pool = self.pool
        if pool == "asyncio":  # `aiecs worker --pool asyncio`: Celery's custom pool
            from aiecs_worker.cli.worker import ASYNCIO_POOL, CUSTOM_POOL_ENV

            pool, env[CUSTOM_POOL_ENV] = "custom", ASYNCIO_POOL
        self.started = time.monotonic()
        self.proc = spawn([CELERY, "-A", self.app, "worker", "--pool", pool,
                           "--concurrency", str(self.concurrency), "--hostname",
                           f"{self.name}@bench", "--without-gossip", "--without-mingle",
                           "--without-heartbeat", "--loglevel", "WARNING", *queues],
                          env=env, log=self.log)
        return self

    @property
    def hostname(self) -> str:
        return f"{self.name}@bench"

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=20)


@dataclass
class ArqWorker:
    """One arq worker process (bench/arq_app.py, in bench/arq_env's interpreter)."""

    redis_url: str
    max_jobs: int = 500
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    started: float = 0.0
    app: str = ARQ_APP

    def start(self) -> ArqWorker:
        self.log = tmpdir("arq") / "worker.log"
        env = base_env(REDIS_URL=self.redis_url, BENCH_ARQ_MAX_JOBS=str(self.max_jobs),
                       **self.env)
        self.started = time.monotonic()
        self.proc = spawn([arq_python(), "-m", ARQ_APP], env=env, log=self.log)
        return self

    tail = Worker.tail
    close = Worker.close


def wait_arq_ready(redis_url: str, workers: list[ArqWorker], timeout: float = 60.0) -> None:
    """Until every arq worker has counted itself in ``bench:arq:ready``."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while int(client.get("bench:arq:ready") or 0) < len(workers):
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"arq worker exited:\n{w.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"arq workers did not start:\n{workers[0].tail()}")
            time.sleep(0.05)
    finally:
        client.close()


def wait_ready(redis_url: str, workers: list[Worker], timeout: float = 60.0) -> float:
    """Ping until every worker answers; the seconds from the first start to the last reply."""
    if workers and isinstance(workers[0], ArqWorker):
        wait_arq_ready(redis_url, workers, timeout)
        return time.monotonic() - min(w.started for w in workers)
    from celery import Celery

    app = Celery("bench-ping", broker=redis_url)
    pending = {w.hostname for w in workers}
    deadline = time.monotonic() + timeout
    try:
        while pending:
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker {w.app} exited:\n{w.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not answer ping:\n{workers[0].tail()}")
            for reply in app.control.ping(destination=list(pending), timeout=0.1) or []:
                pending -= set(reply)
        return time.monotonic() - min(w.started for w in workers)
    finally:
        app.close()


# -- the submitting / measuring child processes --------------------------------------------------


class Child:
    """A ``python -m bench.<module>`` child speaking a line protocol: it prints ``ready``,
    waits for ``go`` on stdin, does its work and prints one JSON line."""

    def __init__(self, module: str, config: dict, env: dict[str, str] | None = None,
                 python: str = PY):
        self.log = tmpdir("child") / "stderr.log"
        self.proc = spawn([python, "-m", module, json.dumps(config)], env=env or base_env(),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, log=self.log)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return ""

    def _line(self, timeout: float) -> str:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise RuntimeError(f"child timed out after {timeout:.0f} s:\n{self._tail()}")
        finally:
            sel.close()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited with {self.proc.wait()}:\n{self._tail()}")
        return line.strip()

    def ready(self, timeout: float = 120.0) -> None:
        line = self._line(timeout)
        if line != "ready":
            raise RuntimeError(f"child said {line!r} instead of ready")

    def go(self, message: str = "go") -> None:
        self.proc.stdin.write(message + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 600.0) -> dict:
        data = json.loads(self._line(timeout))
        stop(self.proc)
        return data

    def close(self) -> None:
        stop(self.proc)


def child_io() -> tuple:
    """For children: (say_ready, wait_go, say_result)."""

    def ready() -> None:
        print("ready", flush=True)

    def wait() -> str:
        return sys.stdin.readline().strip()

    def result(data: dict) -> None:
        print(json.dumps(data), flush=True)

    return ready, wait, result


def cpu_self() -> float:
    t = os.times()
    return t.user + t.system
