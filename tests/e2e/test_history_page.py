"""The page's History and Usage views in headless Chromium (issue 18), at 1280 and 390 px.

- Without the history (a server without the routes: 404; its database away: 503) the
  views say so and the rest of the page works on. The answers are given to the browser by
  request interception, so this runs whatever the server under test offers.
- With the history routes (GET /executions, GET /executions/{task_id}/{step}, GET /usage,
  GET /budget) and a real recorder (`aiecs recorder`): the list pages down to every
  execution of the user, the status filter, a row's detail with its events read back from
  the history database (the failed executions' Redis keys are deleted first), the charts
  and the budget. A server without one of these routes is a failure, never a skip.
Screenshots: test-output/e2e/<test>/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.e2e.nodeproc import run_node
from tests.server.helpers import uid
from tests.support.processes import ServerProcess

BUDGETS = [{"period": "day", "kind": "tokens", "soft": 8000, "hard": 10000},
           {"period": "month", "kind": "usd", "hard": 50}]


@pytest.mark.parametrize(("answer", "width"), [(404, 1280), (503, 390)])
def test_history_unavailable_is_said(node, chromium, page_server, aiecs_redis, worker,
                                     output_dir, width, answer):
    code, lines, err = run_node(node, "history_page.mjs", {
        "url": page_server.url + "/", "chromium": chromium, "screenshot_dir": str(output_dir),
        "user": uid("web"), "width": width, "mode": "unavailable",
        "answers": {"/executions": answer, "/usage": answer, "/budget": answer}}, timeout=120)
    steps = {line["step"]: line for line in lines}
    assert code == 0 and "error" not in steps, json.dumps(lines, indent=1) + err
    assert steps["done"]["errors"] == [], steps["done"]["errors"]

    history = steps["history"]
    assert history["state"] == "unavailable" and history["tableHidden"] is True
    assert history["note"].startswith("History is not available"), history
    assert f"GET /executions answered {answer}" in history["note"]
    why = "cannot reach its store" if answer == 503 else "does not offer it"
    assert why in history["note"]
    usage = steps["usage"]
    assert usage["state"] == "unavailable" and usage["charts"] == 0
    assert usage["usageNote"].startswith("Usage is not available"), usage
    assert usage["budgetNote"].startswith("Your budget is not available"), usage
    assert "run_still_works" in steps
    for stage, w in steps["done"]["widths"].items():  # nothing scrolls sideways
        assert w["scrollWidth"] <= w["clientWidth"] == width, (stage, w)


def _route_missing(server: ServerProcess, token: str,
                   routes: tuple[str, ...] = ("/executions?limit=1", "/usage?group_by=day",
                                              "/budget"),
                   ) -> str | None:
    """The first of these routes this server does not offer (404), or None."""
    for route in routes:
        status, _ = server.http("GET", route, token=token)
        if status == 404:
            return "GET " + route.split("?")[0]
    return None


@pytest.fixture
def history_server(aiecs_redis, tmp_path):
    """A dev server with a history database of its own, budgets on, and a recorder (the
    `aiecs recorder` command) writing what the workers finish into it."""
    env = {"AIECS_DEV": "1", "AIECS_DATABASE_URL": f"sqlite:///{tmp_path / 'history.db'}",
           "AIECS_BUDGETS": json.dumps(BUDGETS)}
    server = ServerProcess(redis_url=os.environ["REDIS_URL"], env=env).start()
    recorder = None
    try:
        missing = _route_missing(server, server.token("probe"))
        assert missing is None, f"{missing} answers 404: the history API is on main (issue 18)"
        recorder = subprocess.Popen(
            [sys.executable, "-m", "aiecs_worker.cli", "recorder"],
            env={**server.environ(), **env}, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT)
        yield server
    finally:
        if recorder is not None:
            recorder.terminate()
            try:
                recorder.wait(10)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
        server.stop()
        server.close()


def _wait_rows(server: ServerProcess, token: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        status, page = server.http("GET", "/executions?limit=500", token=token)
        got = len(page.get("items", [])) if status == 200 else -1
        if got >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"the history lists {got} of the {n} executions after {timeout}s")


def _forget_in_redis(user: str, task_ids: list[str]) -> None:
    """Delete every Redis key of these tasks of ``user`` (state, log, seq, steps)."""
    import redis
    from aiecs_worker.store.keys import task_of_key, user_tasks_pattern

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        keys = [k for k in client.scan_iter(user_tasks_pattern(user), count=1000)
                if task_of_key(k.decode(), user) in task_ids]
        assert len(keys) >= 2 * len(task_ids), keys  # at least each one's state and log
        client.delete(*keys)
    finally:
        client.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_history_view(node, chromium, history_server, worker, output_dir, width):
    server, user = history_server, uid("web")
    token = server.token(user)
    # 60 executions: more than one page (50); 3 of them fail
    items = [{"mode": "test", "service": "echo", "task_name": "echo",
              "input_data": {"text": f"item {i}", "chunks": 1,
                             **({"fail": "invalid"} if i % 20 == 0 else {})}}
             for i in range(60)]
    status, out = server.http("POST", "/batches", {"items": items}, token=token)
    assert status == 202, out
    _wait_rows(server, token, 60)
    # the failed ones' Redis keys gone (as after AIECS_EVENTS_TTL): their detail and events
    # can only come from the history database
    failed_ids = [f"{out['batch_id']}.{i}" for i in (0, 20, 40)]
    _forget_in_redis(user, failed_ids)

    code, lines, err = run_node(node, "history_page.mjs", {
        "url": server.url + "/", "chromium": chromium, "screenshot_dir": str(output_dir),
        "user": user, "width": width, "mode": "live"}, timeout=180)
    steps = {line["step"]: line for line in lines}
    assert code == 0 and "error" not in steps, json.dumps(lines, indent=1) + err
    assert steps["done"]["errors"] == [], steps["done"]["errors"]

    first = steps["first_page"]
    assert first["state"] == "loaded" and first["rows"] == 50 and first["moreHidden"] is False
    every = steps["all_pages"]
    assert every["pages"] == 2 and len(every["rows"]) == 60 and every["moreHidden"] is True
    ids = {(r["task_id"], r["step"]) for r in every["rows"]}
    assert ids == {(f"{out['batch_id']}.{i}", 1) for i in range(60)}  # each once
    assert all(r["rendered"] for r in every["rows"])

    failed = steps["filtered"]["rows"]
    assert sorted(r["task_id"] for r in failed) == sorted(failed_ids)

    detail = steps["detail"]
    assert detail["state"] == "loaded", detail
    assert detail["fields"]["status"] == "failed" and detail["fields"]["service"] == "echo"
    assert "test/echo · echo" in detail["title"]
    assert detail["source"] == "from the history database", detail
    assert [e["status"] for e in detail["events"]] == ["pending", "running", "failed"], detail
    last = detail["events"][-1]["text"]  # the error said once, with its type
    assert last.count("echo was told to fail with invalid") == 1, last
    assert "InvalidRequestError: echo was told to fail with invalid" in last, last

    usage = steps["usage"]
    assert usage["state"] == "loaded", usage
    assert "60 executions" in usage["total"], usage["total"]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert today in {b["key"][:10] for b in usage["dayBars"]}, usage["dayBars"]
    assert usage["budgetNote"] is None, usage
    assert [(b["period"], b["kind"]) for b in usage["budgets"]] == [
        (b["period"], b["kind"]) for b in BUDGETS], usage
    assert all(b["remaining"] for b in usage["budgets"])
    for stage, w in steps["done"]["widths"].items():  # nothing scrolls sideways
        assert w["scrollWidth"] <= w["clientWidth"] == width, (stage, w)
    for name in ("history", "history-detail", "usage"):
        assert (output_dir / f"{width}-{name}.png").stat().st_size > 1_000, name
