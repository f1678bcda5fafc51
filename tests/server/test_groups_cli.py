"""``aiecs batch`` and ``aiecs workflow`` (and ``aiecs watch`` of a workflow), run as a user
runs them, against a real server and worker."""

from __future__ import annotations

import json

from tests.server.helpers import uid
from tests.server.test_cli import aiecs, client_env


def echo_step(n: int, deps=(), **inp) -> dict:
    inp.setdefault("text", f"step {n}")
    return {"step": n, "mode": "test", "service": "echo", "task_name": "echo",
            "depends_on": list(deps), "input_data": inp}


def test_workflow_submit_and_watch_lists_the_steps(progress_server, aiecs_redis, worker):
    env = client_env(progress_server, uid())
    steps = [echo_step(1, text="first words"),
             echo_step(2, [1], text={"$ref": "steps.1.result.text"}),
             echo_step(3, text="x", fail="invalid"), echo_step(4, [3])]
    out = aiecs("workflow", "submit", json.dumps(steps), "--task-id", "cli-wf", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cli-wf"
    watched = aiecs("watch", "cli-wf", "--timeout", "60", env=env)
    lines = watched.stdout.splitlines()
    assert watched.returncode == 1, watched.stdout + watched.stderr  # not all completed
    assert "status: running (step 2)" in lines
    tail = lines[lines.index("workflow cli-wf: FAILED"):]
    assert tail[1:] == [
        "  step 1 test/echo.echo: COMPLETED",
        "  step 2 test/echo.echo after 1: COMPLETED",
        "  step 3 test/echo.echo: FAILED: echo was told to fail with invalid",
        "  step 4 test/echo.echo after 3: CANCELLED: dependency step 3 ended FAILED"]
    bad = aiecs("workflow", "submit", json.dumps([echo_step(1, [1])]), env=env)
    assert bad.returncode == 5 and "step 1: depends on itself" in bad.stderr


def test_batch_submit_watch_show(progress_server, aiecs_redis, worker):
    env = client_env(progress_server, uid())
    items = [{"mode": "test", "service": "echo", "task_name": "echo",
              "input_data": {"text": f"item {i}"}} for i in range(3)]
    out = aiecs("batch", "submit", "-", "--batch-id", "cli-b", "--watch", env=env,
                stdin=json.dumps(items))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == (
        "batch cli-b: COMPLETED — 3/3 ended: 3 completed, 0 failed, 0 timed out, 0 cancelled")
    shown = aiecs("batch", "show", "cli-b", "--json", env=env)
    assert [i["result"]["text"] for i in json.loads(shown.stdout)["items"]] == [
        "item 0", "item 1", "item 2"]
    items[1]["input_data"]["fail"] = "auth"
    out = aiecs("batch", "submit", json.dumps({"items": items}), env=env)
    batch_id = out.stdout.strip()
    watched = aiecs("batch", "watch", batch_id, "--timeout", "60", env=env)
    assert watched.returncode == 1
    assert f"  {batch_id}.1: failed: AuthenticationError: " in watched.stdout
