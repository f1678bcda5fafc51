"""``aiecs worker --processes N``: N workers as one command, kept running, stopped together."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from tests.support.events import wait_terminal, wait_until
from tests.support.metrics import metrics_url, scrape, total
from tests.support.processes import WorkerProcess

AIECS = str(Path(sys.executable).with_name("aiecs"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_one_command_restarted_and_stopped_together(aiecs_redis):
    from aiecs_worker import execute_task

    log = Path(tempfile.mkstemp(prefix="aiecs-supervise-", suffix=".log")[1])
    env = WorkerProcess(redis_url=aiecs_redis.url, env={
        "AIECS_METRICS_PORT": "0", "AIECS_METRICS_HOST": "127.0.0.1"}).environ()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [AIECS, "worker", "--processes", "2", "--", "--pool", "threads",
             "--concurrency", "4", "--loglevel", "INFO", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(lambda: log.read_text().count(" ready.") == 2, timeout=60,
                   message="two workers ready")
        text = log.read_text()
        assert "aiecs1@" in text and "aiecs2@" in text
        # `aiecs health --worker` finds them without being told their names
        host = socket.gethostname()
        health = subprocess.run([AIECS, "health", "--worker"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        assert f"ok   node: ping answered by aiecs1@{host}, aiecs2@{host}" in health.stdout
        children = [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        assert len(children) == 2

        # both take work
        ids = [f"t{uuid.uuid4().hex[:8]}" for _ in range(8)]
        for task_id in ids:
            execute_task.delay(task_name="echo", user_id="alice", task_id=task_id, step=1,
                               mode="test", service="echo", input_data={"text": "a b"},
                               context={})
        client = aiecs_redis.client()
        for task_id in ids:
            terminal, _ = wait_terminal(client, "alice", task_id)
            assert terminal["status"] == "completed"
        # one metrics page for both workers (one shared directory), summed
        url = metrics_url(log.read_text)
        wait_until(lambda: total(scrape(url), "celery_task_executions_total",
                                 status="completed") == 8, timeout=10,
                   message="8 completed executions on the command's metrics page")
        pids = {lab["pid"] for lab, _ in scrape(url)["aiecs_process_resident_memory_bytes"]}
        assert set(map(str, children)) <= pids

        # a worker that dies is started again
        os.kill(children[0], signal.SIGKILL)
        wait_until(lambda: "worker 1 exited" in log.read_text()
                   or "worker 2 exited" in log.read_text(), timeout=30,
                   message="the supervisor noticing the dead worker")
        wait_until(lambda: log.read_text().count(" ready.") == 3, timeout=60,
                   message="the dead worker started again")
        now = [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        assert len(now) == 2 and children[0] not in now
        # the dead worker's counts stay in the sum, its gauges and memory leave it
        s = scrape(url)
        assert total(s, "celery_task_executions_total", status="completed") == 8
        assert total(s, "celery_active_tasks") == 0
        assert str(children[0]) not in {
            lab["pid"] for lab, _ in s["aiecs_process_resident_memory_bytes"]}

        # SIGTERM stops them all, and the command exits
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not any(_alive(pid) for pid in now)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        print(log.read_text()[-3000:])
        log.unlink(missing_ok=True)
