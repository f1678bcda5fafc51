"""History end to end through real parts, on SQLite and on PostgreSQL: a real worker runs
two executions (one submitted by template, by its label), a real ``aiecs recorder``
process writes them, and a real ``aiecs serve`` answers ``GET /executions/{task_id}/{step}``
from the history database once their Redis keys are gone, with their events, template
and usage; ``GET /usage?group_by=template`` groups them by name@version."""

from __future__ import annotations

import os

import redis
from aiecs_worker.server.tokens import issue_token
from aiecs_worker.store.keys import task_of_key, user_tasks_pattern

from tests.server.helpers import uid
from tests.support.events import wait_until
from tests.support.processes import SECRET, ServerProcess

GREET = {"mode": "test", "service": "echo", "operation": "echo",
         "input": {"text": "Hello there, {{who}}!", "chunks": 2},
         "variables_schema": {"type": "object", "required": ["who"],
                              "properties": {"who": {"type": "string"}}}}


def _forget_in_redis(user: str, task_ids: set[str]) -> None:
    """Delete every Redis key of these tasks (as their AIECS_EVENTS_TTL would)."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        keys = [k for k in client.scan_iter(user_tasks_pattern(user), count=1000)
                if task_of_key(k.decode(), user) in task_ids]
        assert len(keys) >= 2 * len(task_ids), keys  # each one's state and log at least
        client.delete(*keys)
    finally:
        client.close()


def _text(events: list[dict]) -> str:
    return "".join(e.get("delta", "") for e in events if e["type"] == "stream")


def test_a_finished_execution_is_served_from_the_database_after_redis_forgot_it(
        database_url, worker, start_recorder):
    server = ServerProcess(redis_url=os.environ["REDIS_URL"],
                           env={"AIECS_DATABASE_URL": database_url}).start()
    try:
        start_recorder(database_url=database_url)  # `aiecs recorder`, started
        user, name = uid("e2e"), uid("greet-")
        tok = server.token(user)
        ops = issue_token("ops", SECRET, 600, scopes=("operator",))
        assert server.http("POST", "/templates", {"name": name, **GREET}, token=ops)[0] == 201
        assert server.http("PUT", f"/templates/{name}/labels/production",
                           {"version": 1, "expected_version": None}, token=ops)[0] == 200

        status, plain = server.http("POST", "/tasks", {
            "mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "one two three", "chunks": 3}}, token=tok)
        assert status == 202, plain
        status, templated = server.http("POST", "/tasks", {
            "template": {"name": name, "label": "production"}, "variables": {"who": "Ada"}},
            token=tok)
        assert status == 202 and templated["template"] == {"name": name, "version": 1}
        ids = {plain["task_id"]: (3, None), templated["task_id"]: (3, 1)}  # words, version

        def recorded():
            status, page = server.http("GET", "/executions?limit=10", token=tok)
            rows = {r["task_id"]: r for r in page.get("items", [])} if status == 200 else {}
            return rows if set(rows) == set(ids) else None

        rows = wait_until(recorded, timeout=60, message="both executions recorded")
        live = {}
        for task_id in ids:
            status, view = server.http("GET", f"/executions/{task_id}/1", token=tok)
            assert status == 200 and view["source"] == "redis", view
            live[task_id] = view

        _forget_in_redis(user, set(ids))
        for task_id, (words, version) in ids.items():
            status, view = server.http("GET", f"/executions/{task_id}/1", token=tok)
            assert status == 200 and view["source"] == "database", view
            row = view["execution"]
            assert row == rows[task_id]  # the list's row, the same record
            assert (row["user_id"], row["task_id"], row["step"], row["status"]) == (
                user, task_id, 1, "completed")
            assert (row["mode"], row["service"], row["operation"], row["model"]) == (
                "test", "echo", "echo", "echo-1")
            assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (
                words, words, "reported")
            assert (row["template_name"], row["template_version"]) == (
                (name, version) if version else (None, None))
            assert row["deliveries"] == 1 and row["run_ms"] is not None and row["worker"]
            # the compacted log: the same statuses and the same text as Redis had
            events = view["events"]
            assert [e["status"] for e in events if e["type"] == "status"] == [
                e["status"] for e in live[task_id]["events"] if e["type"] == "status"] == [
                "pending", "running", "completed"]
            want = "Hello there, Ada!" if version else "one two three"
            assert _text(events) == _text(live[task_id]["events"]) == want
            tpl = {e.get("template", {}).get("version") for e in events}
            assert tpl == {version}, events
        # Redis knows nothing of them any more: only the database could have answered
        assert server.http("GET", f"/tasks/{plain['task_id']}", token=tok)[0] == 404

        status, usage = server.http("GET", "/usage?group_by=template", token=tok)
        assert status == 200 and usage["group_by"] == "template", usage
        groups = {g["key"]: g for g in usage["groups"]}
        assert (groups[f"{name}@1"]["executions"], groups[f"{name}@1"]["input_tokens"],
                groups[f"{name}@1"]["output_tokens"]) == (1, 3, 3), groups
        assert usage["total"]["executions"] == 2 and usage["total"]["input_tokens"] == 6
        assert sum(g["executions"] for g in usage["groups"]) == 2, groups
    finally:
        server.stop()
        server.close()
