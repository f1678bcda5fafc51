"""The ``aiecs`` command line, run as a user runs it (a subprocess), against a real server
and worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from aiecs_worker.server.tokens import verify_token

from tests.server.helpers import uid
from tests.support.processes import SECRET


def aiecs(*args: str, env: dict[str, str] | None = None, timeout: float = 90,
          stdin: str | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "aiecs_worker.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


def client_env(server, user: str) -> dict[str, str]:
    return {"AIECS_TOKEN": server.token(user), "AIECS_SERVER_URL": server.url}


def test_token_command():
    out = aiecs("token", "alice", "--ttl", "120", env={"AIECS_SECRET_KEY": SECRET})
    assert out.returncode == 0, out.stderr
    assert verify_token(out.stdout.strip(), SECRET).user_id == "alice"
    missing = aiecs("token", "alice")
    assert missing.returncode == 2 and "AIECS_SECRET_KEY is not set" in missing.stderr
    bad = aiecs("token", "a:b", env={"AIECS_SECRET_KEY": SECRET})
    assert bad.returncode == 2 and "does not match" in bad.stderr


def test_submit_watch_completes(progress_server, aiecs_redis, worker):
    env = client_env(progress_server, uid())
    out = aiecs("submit", "echo", "echo", "--mode", "test", "--input",
                '{"text": "streamed to the terminal", "chunks": 3, "delay": 0.05}', "--watch",
                env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted task" in out.stderr
    lines = out.stdout.splitlines()
    assert "status: running (step 1)" in lines
    # the streamed text as text, on its own line (not one repr per chunk)
    assert lines[lines.index("status: running (step 1)") + 1:][:2] == [
        "streamed to the terminal", "status: completed (step 1)"], lines
    assert not any(line.startswith("stream: ") for line in lines)
    assert lines[-1].startswith("COMPLETED task ") and lines[-1].endswith(" step 1")


def test_watch_shows_when_a_scheduled_task_runs(progress_server, aiecs_redis, worker):
    env = client_env(progress_server, uid())
    out = aiecs("submit", "echo", "echo", "--mode", "test", "--input", '{"text": "later"}',
                "--countdown", "1", "--watch", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    pending = [line for line in out.stdout.splitlines() if line.startswith("status: pending")]
    assert pending and pending[0].startswith("status: pending (step 1): scheduled for 20"), \
        out.stdout


def test_submit_without_watch_prints_the_id_and_input_from_stdin(progress_server, aiecs_redis,
                                                                 worker):
    user = uid()
    env = client_env(progress_server, user)
    out = aiecs("submit", "echo", "noop", "--mode", "test", "--input", "-", "--task-id",
                "cli-task", env=env, stdin="{}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cli-task"
    watched = aiecs("watch", "cli-task", env=env)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert watched.stdout.splitlines()[-1] == "COMPLETED task cli-task step 1"


@pytest.mark.parametrize(
    ("inp", "code", "word"),
    [({"text": "x", "fail": "invalid"}, 1, "FAILED"),
     ({"text": "x" * 40, "chunks": 40, "delay": 0.25}, 4, "CANCELLED")],
    ids=["failed", "cancelled"],
)
def test_watch_exit_codes(progress_server, aiecs_redis, worker, inp, code, word):
    user = uid()
    env = client_env(progress_server, user)
    task_id = uid("t")
    out = aiecs("submit", "echo", "echo", "--mode", "test", "--input", json.dumps(inp),
                "--task-id", task_id, env=env)
    assert out.returncode == 0, out.stderr
    watcher = subprocess.Popen([sys.executable, "-m", "aiecs_worker.cli", "watch", task_id],
                               env=dict(os.environ, **env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        if word == "CANCELLED":
            from tests.server.helpers import wait_until

            token = env["AIECS_TOKEN"]
            wait_until(lambda: progress_server.http("GET", f"/tasks/{task_id}", token=token)[1]
                       .get("status") == "running", timeout=30, message="running")
            assert progress_server.http("DELETE", f"/tasks/{task_id}", token=token)[0] == 202
        stdout, stderr = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == code, stdout + stderr
    last = stdout.splitlines()[-1]
    assert last.startswith(f"{word} task {task_id} step 1")
    if word == "FAILED":
        assert "InvalidRequestError: echo was told to fail with invalid" in last


def test_watch_timed_out_exit_code(progress_server, aiecs_redis, start_worker):
    start_worker(env={"CELERY_TASK_SOFT_TIME_LIMIT": "1", "CELERY_TASK_TIME_LIMIT": "10"})
    env = client_env(progress_server, uid())
    out = aiecs("submit", "echo", "echo", "--mode", "test", "--input",
                '{"text": "slow", "chunks": 4, "delay": 1}', "--watch", env=env)
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("TIMED_OUT task ")


def test_watch_refusals_exit_5(progress_server):
    env = client_env(progress_server, uid())
    unknown = aiecs("watch", "never-submitted", env=env)
    assert unknown.returncode == 5 and "no task 'never-submitted'" in unknown.stdout
    bad = aiecs("watch", "t1", env={**env, "AIECS_TOKEN": "garbage"})
    assert bad.returncode == 5 and "connection refused: malformed token" in bad.stdout
    down = aiecs("watch", "t1", "--server", "http://127.0.0.1:9", env=env)
    assert down.returncode == 5 and "cannot connect" in down.stdout
    no_token = aiecs("watch", "t1", env={"AIECS_SERVER_URL": progress_server.url})
    assert no_token.returncode == 2 and "no token" in no_token.stderr
    refused = aiecs("submit", "echo", "echo", "--mode", "test", "--input", '{"txt": 1}',
                    env=env)
    assert refused.returncode == 5 and "InputValidationError" in refused.stderr
    bad_json = aiecs("submit", "echo", "echo", "--mode", "test", "--input", "{", env=env)
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr


def test_user_option_signs_with_the_local_secret(progress_server, aiecs_redis, worker):
    out = aiecs("submit", "echo", "noop", "--mode", "test", "--user", uid(), "--watch",
                env={"AIECS_SECRET_KEY": SECRET, "AIECS_SERVER_URL": progress_server.url})
    assert out.returncode == 0, out.stdout + out.stderr


def test_plugins_command():
    out = aiecs("plugins", "--json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert any(s["mode"] == "test" and s["service"] == "echo" for s in listing["services"])
    table = aiecs("plugins")
    assert "test/echo" in table.stdout and "echo_heavy" in table.stdout
    assert table.returncode == (1 if listing["failures"] else 0)
