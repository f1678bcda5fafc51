"""``aiecs health --worker`` (the probes' command) against real workers: 0 while healthy,
non-zero once the worker's main process or one of its event loops stops, or the broker is
down; healthy again when they come back.

Transitions are polled in-process (``check_all``, what the command runs); the command
itself runs once per state that matters, for its output and exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.events import wait_until

AIECS = str(Path(sys.executable).with_name("aiecs"))
LEASE = 3  # seconds (the smallest allowed): a loop is stale after 2 s without renewal


def command(worker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIECS, "health", "--worker", "--node", f"{worker.name}@%h",
                           "--timeout", "2", *args], env=worker.environ(), capture_output=True,
                          text=True, timeout=60)


def wait_health(worker, healthy: bool, timeout: float = 40) -> str:
    """Poll the checks (this process's settings: the session's Redis) until they report
    ``healthy``; their lines."""
    from aiecs_worker.cli.health import check_all

    def check():
        checks = check_all(worker=True, nodes=[f"{worker.name}@%h"], server=None,
                           timeout=2, lease_seconds=LEASE)
        if all(c.ok for c in checks) != healthy:
            return None
        return "\n".join(c.line() for c in checks)

    return wait_until(check, timeout=timeout, interval=0.2,
                      message=f"health to report {'healthy' if healthy else 'unhealthy'}")


@pytest.mark.faults  # stops processes and waits for leases to go stale
def test_health_follows_the_main_process_and_each_loop(aiecs_redis, start_worker):
    """prefork: the main process answers the node ping, the children hold the leases."""
    worker = start_worker(pool="prefork", concurrency=1,
                          env={"AIECS_LEASE_SECONDS": str(LEASE)})
    wait_health(worker, True)
    out = command(worker)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   node" in out.stdout and "ok   loop" in out.stdout

    child = worker.children()[0]
    os.kill(child, signal.SIGSTOP)  # a child's loop stops; the main process still answers
    try:
        out = wait_health(worker, False)
        assert "FAIL loop" in out and f":{child}:" in out and "ok   node" in out
    finally:
        os.kill(child, signal.SIGCONT)
    wait_health(worker, True)

    os.kill(worker.proc.pid, signal.SIGSTOP)  # the main process (the consumer) stops
    try:
        assert "FAIL node" in wait_health(worker, False)
        out = command(worker, "--live")  # stuck while Redis answers: liveness fails too
        assert out.returncode == 1 and "FAIL node" in out.stdout
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    wait_health(worker, True)


@pytest.mark.faults  # stops a Redis under a running worker
def test_health_fails_when_the_broker_is_down(redis_server, start_worker):
    worker = start_worker(redis_url=redis_server.url, env={"AIECS_LEASE_SECONDS": str(LEASE)})
    wait_until(lambda: command(worker).returncode == 0, timeout=40, interval=0.2,
               message="the worker to be healthy")
    redis_server.stop()
    out = command(worker)  # bounded: each check has its --timeout
    assert out.returncode == 1, out.stdout
    assert "FAIL broker" in out.stdout and "FAIL state" in out.stdout
    # liveness: a Redis outage is no reason to restart the worker
    out = command(worker, "--live")
    assert out.returncode == 0, out.stdout
    assert "not counted (--live)" in out.stdout


def test_health_without_a_worker_is_not_ready(aiecs_redis):
    from tests.support.processes import WorkerProcess

    out = command(WorkerProcess(aiecs_redis.url))  # never started
    assert out.returncode == 1
    assert "ok   broker" in out.stdout and "FAIL node" in out.stdout
    assert "FAIL loop" in out.stdout
