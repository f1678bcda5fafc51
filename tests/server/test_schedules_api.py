"""Scheduled executions over HTTP and the CLI: one-off (``countdown`` / ``eta`` on
``POST /tasks``) and periodic (``/schedules``), against a real server, worker and beat."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.server.helpers import uid, wait_until
from tests.support.processes import SECRET, ServerProcess

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


@pytest.fixture(scope="module")
def progress_server():
    """This module's server: schedules every second allowed (AIECS_SCHEDULE_MIN_PERIOD is
    10 s by default; tests/server/test_quotas.py covers the default)."""
    server = ServerProcess(redis_url=os.environ["REDIS_URL"],
                           env={"AIECS_SCHEDULE_MIN_PERIOD": "1"}).start()
    yield server
    server.stop()
    print("\n".join(server.log().splitlines()[-80:]))
    server.close()


def echo(**extra):
    return {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "later", "chunks": 1}, **extra}


def view(server: ServerProcess, token: str, task_id: str) -> dict:
    status, body = server.http("GET", f"/tasks/{task_id}", token=token)
    assert status == 200, body
    return body


# -- one-off: countdown / eta ---------------------------------------------------------------
def test_countdown_runs_once_its_time_has_come(progress_server, aiecs_redis, worker):
    server, user = progress_server, uid()
    token = server.token(user)
    status, out = server.http("POST", "/tasks", echo(countdown=2), token=token)
    assert status == 202, out
    assert out["eta"] == pytest.approx(time.time() + 2, abs=1)
    pending = view(server, token, out["task_id"])
    assert pending["status"] == "pending" and pending["steps"][0]["eta"] == pytest.approx(
        out["eta"], abs=0.01)
    assert pending["events"][0]["message"].startswith("scheduled for ")

    def done():
        v = view(server, token, out["task_id"])
        return v["status"] in TERMINAL and v

    final = wait_until(done, timeout=30, message="the run")
    assert final["status"] == "completed" and final["result"]["text"] == "later"
    assert final["steps"][0]["started"] >= out["eta"] - 0.05


def test_cancelling_before_its_time_ends_it_at_once_and_it_never_runs(
        progress_server, aiecs_redis, worker):
    server, user = progress_server, uid()
    token = server.token(user)
    status, out = server.http("POST", "/tasks", echo(countdown=4), token=token)
    assert status == 202, out
    status, body = server.http("DELETE", f"/tasks/{out['task_id']}", token=token)
    assert status == 202 and body["cancelling"] == [1], body
    now = view(server, token, out["task_id"])  # at once, not at its eta
    assert now["status"] == "cancelled"
    assert now["error"]["message"] == "cancelled before its scheduled time"
    # its time comes: the worker that holds the message discards it
    wait_until(lambda: "Discarding revoked task" in worker.log(), timeout=30,
               message="the worker to discard the revoked message")
    final = view(server, token, out["task_id"])
    statuses = [e["status"] for e in final["events"] if e["type"] == "status"]
    assert statuses == ["pending", "cancelled"], statuses
    assert final["steps"][0].get("started") is None


@pytest.mark.parametrize("extra,needle", [
    ({"countdown": -1}, "countdown"),
    ({"eta": "2030-01-01T00:00:00"}, "eta"),  # no timezone
    ({"eta": "2030-01-01T00:00:00Z", "countdown": 5}, "not both"),
    ({"eta": "2099-01-01T00:00:00Z"}, "days ahead"),
])
def test_bad_timing_is_refused(progress_server, extra, needle):
    status, body = progress_server.http("POST", "/tasks", echo(**extra),
                                        token=progress_server.token(uid()))
    assert status == 422 and needle in body["error"]["message"], body


# -- periodic: /schedules ------------------------------------------------------------------
@pytest.mark.parametrize("body,status,needle", [
    (echo(cron="61 * * * *"), 422, "invalid cron expression"),
    (echo(cron="* * * *"), 422, "invalid cron expression"),
    (echo(), 422, "exactly one of every"),
    (echo(every=5, cron="* * * * *"), 422, "exactly one of every"),
    (echo(every=0.5), 422, "every"),
    ({**echo(every=5), "service": "nope"}, 422, "no service 'nope'"),
    ({**echo(every=5), "task_name": "nope"}, 422, "has no operation 'nope'"),
    ({**echo(every=5), "input_data": {"chunks": 2}}, 422, "text"),
    ({**echo(every=5), "user_id": "someone"}, 422, "taken from the token"),
    ({**echo(every=5), "step": 3}, 422, "step"),
])
def test_invalid_schedules_are_refused_at_creation(progress_server, body, status, needle):
    code, out = progress_server.http("POST", "/schedules", body,
                                     token=progress_server.token(uid()))
    assert code == status and needle in out["error"]["message"], out


def test_schedules_belong_to_their_user(progress_server, aiecs_redis):
    server, alice, bob = progress_server, uid("alice"), uid("bob")
    ta, tb = server.token(alice), server.token(bob)
    assert server.http("POST", "/schedules", echo(every=60))[0] == 401
    status, made = server.http("POST", "/schedules", echo(every=60, task_id="daily"),
                               token=ta)
    assert status == 201, made
    assert made["task_id"] == "daily" and made["every"] == 60 and made["runs"] == 0
    assert made["next_run_at"] == pytest.approx(time.time() + 60, abs=5)
    status, cron = server.http("POST", "/schedules", echo(cron="0 9 * * 1-5"), token=ta)
    assert status == 201 and cron["cron"] == "0 9 * * 1-5", cron
    assert server.http("POST", "/schedules", echo(every=5, task_id="daily"),
                       token=ta)[0] == 409
    listed = server.http("GET", "/schedules", token=ta)[1]["schedules"]
    assert sorted(s["task_id"] for s in listed) == sorted(["daily", cron["task_id"]])
    # bob sees none of them, cannot read or delete them, and may use the same task id
    assert server.http("GET", "/schedules", token=tb)[1] == {"schedules": []}
    assert server.http("GET", "/schedules/daily", token=tb)[0] == 404
    assert server.http("DELETE", "/schedules/daily", token=tb)[0] == 404
    assert server.http("POST", "/schedules", echo(every=60, task_id="daily"),
                       token=tb)[0] == 201
    assert server.http("GET", "/schedules/daily", token=ta)[1]["every"] == 60
    status, gone = server.http("DELETE", "/schedules/daily", token=ta)
    assert status == 200 and gone == {"task_id": "daily", "deleted": True}
    assert server.http("GET", "/schedules/daily", token=ta)[0] == 404
    assert server.http("DELETE", "/schedules/daily", token=ta)[0] == 404
    client = aiecs_redis.client()  # beat's entry went with it; bob's stays
    assert client.zscore("aiecs:beat::schedule", f"aiecs:beat:{alice}:daily") is None
    assert client.zscore("aiecs:beat::schedule", f"aiecs:beat:{bob}:daily") is not None


def test_a_schedule_made_over_http_runs_under_beat(progress_server, aiecs_redis, worker,
                                                   start_beat):
    server, user = progress_server, uid()
    token = server.token(user)
    status, made = server.http("POST", "/schedules", echo(every=1), token=token)
    assert status == 201, made
    start_beat().wait_lock()

    def two_done():
        status, v = server.http("GET", f"/tasks/{made['task_id']}", token=token)
        done = [s for s in v["steps"] if s["status"] == "completed"] if status == 200 else []
        return len(done) >= 2 and v

    v = wait_until(two_done, timeout=30, message="two completed runs")
    assert [s["step"] for s in v["steps"]][:2] == [1, 2]
    listed = server.http("GET", f"/schedules/{made['task_id']}", token=token)[1]
    assert listed["runs"] >= 2 and listed["last_run"]["step"] >= 2


# -- CLI ------------------------------------------------------------------------------------
def _aiecs(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AIECS_SECRET_KEY=SECRET)
    return subprocess.run(
        [sys.executable, "-m", "aiecs_worker.cli", *args, "--server", server.url],
        env=env, capture_output=True, text=True, timeout=120)


def test_cli_schedule_add_list_rm(progress_server, aiecs_redis):
    user = uid()
    add = _aiecs(progress_server, "schedule", "add", "echo", "echo", "--mode", "test",
                 "--every", "30", "--input", '{"text": "hi"}', "--user", user)
    assert add.returncode == 0, add.stderr
    task_id = add.stdout.strip()
    assert f"{task_id}  every 30s  test/echo.echo  runs 0" in add.stderr
    listed = _aiecs(progress_server, "schedule", "list", "--user", user)
    assert listed.returncode == 0 and listed.stdout.startswith(task_id), listed
    bad = _aiecs(progress_server, "schedule", "add", "echo", "echo", "--mode", "test",
                 "--cron", "99 * * * *", "--input", '{"text": "hi"}', "--user", user)
    assert bad.returncode == 5 and "invalid cron expression" in bad.stderr, bad.stderr
    rm = _aiecs(progress_server, "schedule", "rm", task_id, "--user", user)
    assert rm.returncode == 0, rm.stderr
    assert progress_server.http("GET", "/schedules",
                                token=progress_server.token(user))[1] == {"schedules": []}
