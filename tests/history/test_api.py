"""The history API through a real ``aiecs serve`` on SQLite and on PostgreSQL: pages,
filters, who may read whose, the NDJSON export, one execution from Redis or from the
database, usage, forgetting a user; rows are written straight into the database."""

from __future__ import annotations

import json
import os
import random
import urllib.request
import uuid

import pytest
import redis
from aiecs_history import tables
from aiecs_worker.server.tokens import issue_token
from sqlalchemy import func, select

from tests.history.rows import execution, fresh_engine, insert_rows
from tests.support.processes import SECRET


def uid(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def operator_token(user: str = "ops") -> str:
    return issue_token(user, SECRET, 600, scopes=("operator",))


@pytest.fixture
def hs(history_server):
    engine = fresh_engine(history_server.database_url)
    history_server.engine = engine
    yield history_server
    engine.dispose()


def _window() -> float:
    """A time range no other test writes in (the module's database is shared)."""
    return 1_600_000_000.0 + random.randrange(10**6) * 1000.0


def _pages(server, path, token):
    items, cursor = [], None
    while True:
        sep = "&" if "?" in path else "?"
        status, page = server.http(
            "GET", path + (f"{sep}cursor={cursor}" if cursor else ""), token=token)
        assert status == 200, page
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_pages_filters_and_whose_history(hs):
    server, a, b, t0 = hs.server, uid("a"), uid("b"), _window()
    insert_rows(hs.engine, [
        execution(a, f"t{i}", t0 + i, status="failed" if i % 3 == 0 else "completed")
        for i in range(7)] + [execution(b, f"t{i}", t0 + i) for i in range(2)])
    ta = server.token(a)
    status, page = server.http("GET", "/executions?limit=3", token=ta)
    assert status == 200 and len(page["items"]) == 3 and page["next_cursor"]
    items = _pages(server, "/executions?limit=3", ta)
    assert [i["task_id"] for i in items] == [f"t{i}" for i in reversed(range(7))]
    assert items[0]["user_id"] == a and items[0]["status"] == "failed"
    assert set(items[0]) == {c.name for c in tables.executions.columns}
    failed = _pages(server, "/executions?status=failed", ta)
    assert [i["task_id"] for i in failed] == ["t6", "t3", "t0"]
    assert _pages(server, f"/executions?user={a}&service=xai", ta) == []
    # another user's: 403 without the operator scope; an operator reads anyone's
    status, err = server.http("GET", f"/executions?user={b}", token=ta)
    assert status == 403 and "operator" in err["error"]["message"]
    ops = operator_token()
    assert {i["user_id"] for i in _pages(server, f"/executions?user={b}", ops)} == {b}
    both = _pages(server, f"/executions?since={t0}&until={t0 + 7}", ops)
    assert sorted({i["user_id"] for i in both}) == sorted({a, b}) and len(both) == 9
    assert server.http("GET", "/executions")[0] == 401


@pytest.mark.parametrize(("query", "message"), [
    ("limit=0", "limit must be between 1 and 500"),
    ("limit=501", "limit must be between 1 and 500"),
    ("limit=ten", "limit must be an integer"),
    ("cursor=not-a-cursor", "invalid cursor"),
    ("cursor=WzEsInh5Il0", "invalid cursor"),  # [1, "xy"]
    ("since=yesterday", "since must be an ISO-8601 time"),
    ("until=1e300", "until must be UNIX seconds"),
    ("since=2026-12-02&until=2026-12-01", "since is later than until"),
    ("status=done", "status must be one of"),
    ("template_version=-1", "template_version must be a positive integer"),
    ("statuss=failed", "unknown parameter 'statuss'"),
    ("format=csv", "format must be json or ndjson"),
    ("user=bad%20id", "user must match"),
])
def test_bad_parameters_are_422_with_a_clear_message(hs, query, message):
    status, err = hs.server.http("GET", f"/executions?{query}", token=hs.server.token(uid()))
    assert status == 422, err
    assert message in err["error"]["message"]


def test_time_parameters_take_iso_and_unix_seconds(hs):
    user = uid()
    insert_rows(hs.engine, [execution(user, "old", 1_767_225_600.0),  # 2026-01-01T00:00Z
                            execution(user, "new", 1_767_312_000.0)])  # 2026-01-02T00:00Z
    tok = hs.server.token(user)
    for since in ("2026-01-01T12:00:00Z", "2026-01-01T12:00:00", "1767268800"):
        status, page = hs.server.http("GET", f"/executions?since={since}", token=tok)
        assert status == 200 and [i["task_id"] for i in page["items"]] == ["new"], since
    status, page = hs.server.http("GET", "/executions?until=2026-01-02", token=tok)
    assert [i["task_id"] for i in page["items"]] == ["old"]
    assert page["items"][0]["finished_at"] == "2026-01-01T00:00:00Z"


def _get_raw(server, path, token):
    req = urllib.request.Request(server.url + path,
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.headers.get("content-type"), resp.read()


def test_ndjson_export_streams_every_match(hs):
    user, other, t0 = uid(), uid(), _window()
    n = 1234  # more than two of the export's database reads (500 rows each)
    insert_rows(hs.engine, [execution(user, f"t{i}", t0 + i,
                                      model="m1" if i % 2 else "m2") for i in range(n)]
                + [execution(other, "x", t0)])
    ctype, body = _get_raw(hs.server, "/executions?format=ndjson", hs.server.token(user))
    assert ctype.startswith("application/x-ndjson")
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert [r["task_id"] for r in rows] == [f"t{i}" for i in reversed(range(n))]
    assert {r["user_id"] for r in rows} == {user}
    _, body = _get_raw(hs.server, "/executions?format=ndjson&model=m1", hs.server.token(user))
    assert len(body.splitlines()) == n // 2


def _echo(**extra):
    return {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "hi"}, **extra}


def test_one_execution_from_redis_while_it_is_there_else_from_the_database(hs):
    server, user = hs.server, uid()
    tok = server.token(user)
    # held in Redis for an hour (no worker needed): its state and log are in Redis
    status, out = server.http("POST", "/tasks", _echo(countdown=3600), token=tok)
    assert status == 202, out
    task_id = out["task_id"]
    status, view = server.http("GET", f"/executions/{task_id}/1", token=tok)
    assert status == 200, view
    assert view["source"] == "redis"
    row = view["execution"]
    assert set(row) == {c.name for c in tables.executions.columns}
    assert (row["user_id"], row["task_id"], row["step"], row["status"]) == (
        user, task_id, 1, "pending")
    assert (row["mode"], row["service"], row["operation"]) == ("test", "echo", "echo")
    assert [e["status"] for e in view["events"]] == ["pending"]
    assert server.http("DELETE", f"/tasks/{task_id}", token=tok)[0] == 202
    status, view = server.http("GET", f"/executions/{task_id}/1", token=tok)
    assert view["source"] == "redis" and view["execution"]["status"] == "cancelled"
    assert view["execution"]["finished_at"].endswith("Z")
    assert [e["status"] for e in view["events"]] == ["pending", "cancelled"]
    # another user's is not found, an operator's ?user= finds it
    assert server.http("GET", f"/executions/{task_id}/1", token=server.token(uid()))[0] == 404
    status, view = server.http("GET", f"/executions/{task_id}/1?user={user}",
                               token=operator_token())
    assert status == 200 and view["execution"]["user_id"] == user

    # only in the database (its Redis keys expired): its row and compacted log
    events = [{"seq": 1, "type": "status", "status": "pending", "step": 2},
              {"seq": 2, "type": "stream", "delta": "hello", "step": 2},
              {"seq": 3, "type": "status", "status": "completed", "step": 2}]
    insert_rows(hs.engine, [execution(user, task_id, 1_780_000_000.0, step=2)],
                events={(user, task_id, 2): json.dumps(events)})
    status, view = server.http("GET", f"/executions/{task_id}/2", token=tok)
    assert status == 200, view
    assert view["source"] == "database" and view["events"] == events
    assert view["execution"]["finished_at"] == "2026-05-28T20:26:40Z"
    status, err = server.http("GET", f"/executions/{task_id}/3", token=tok)
    assert status == 404 and "no execution" in err["error"]["message"]
    assert server.http("GET", f"/executions/{task_id}/x", token=tok)[0] == 422
    assert server.http("GET", "/executions/bad%20id/1", token=tok)[0] == 400


def test_usage_grouped(hs):
    server, user, t0 = hs.server, uid(), 1_767_225_600.0  # 2026-01-01T00:00Z
    insert_rows(hs.engine, [
        execution(user, "a", t0 + 10, input_tokens=100, output_tokens=10, cost=0.5),
        execution(user, "b", t0 + 20, model="grok-3", service="xai", cost=None),
        execution(user, "c", t0 + 86_400, input_tokens=5, output_tokens=5, cost=0.25,
                  template_name="summarize", template_version=2),
    ])
    tok = server.token(user)
    status, out = server.http("GET", "/usage?group_by=day", token=tok)
    assert status == 200, out
    assert [(g["key"], g["executions"]) for g in out["groups"]] == [
        ("2026-01-01", 2), ("2026-01-02", 1)]
    assert out["total"] == {"executions": 3, "input_tokens": 115, "output_tokens": 35,
                            "cost": 0.75, "unpriced": 1}
    status, out = server.http("GET", "/usage?group_by=provider&since=2026-01-01T00:00:15Z",
                              token=tok)
    assert {g["key"]: g["cost"] for g in out["groups"]} == {"xai": None, "openai": 0.25}
    status, out = server.http("GET", "/usage?group_by=template", token=tok)
    assert {g["key"] for g in out["groups"]} == {None, "summarize@2"}
    status, out = server.http("GET", "/usage?group_by=week", token=tok)
    assert status == 422 and "group_by must be one of" in out["error"]["message"]
    status, out = server.http("GET", f"/usage?group_by=model&user={user}",
                              token=operator_token())
    assert {g["key"] for g in out["groups"]} == {"gpt-4o-mini", "grok-3"}
    assert server.http("GET", "/usage?user=someone", token=tok)[0] == 403


def _count(engine, table, user):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)
                            .where(table.c.user_id == user)).scalar()


def test_forget_a_user(hs):
    server, user, other = hs.server, uid(), uid()
    tok = server.token(user)
    rows = [execution(user, f"t{i}", 1_780_000_000.0 + i) for i in range(5)]
    insert_rows(hs.engine, rows + [execution(other, "t0", 1_780_000_000.0)],
                events={(user, "t0", 1): "[]", (other, "t0", 1): "[]"})
    ended = server.http("POST", "/tasks", _echo(countdown=3600), token=tok)[1]["task_id"]
    assert server.http("DELETE", f"/tasks/{ended}", token=tok)[0] == 202
    waiting = server.http("POST", "/tasks", _echo(countdown=3600), token=tok)[1]["task_id"]
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    assert client.exists(f"aiecs:t:{user}:{ended}:log", f"aiecs:t:{user}:{ended}:1:state") == 2

    status, err = server.http("DELETE", f"/users/{user}/history", token=tok)
    assert status == 403 and "operator token" in err["error"]["message"]
    assert _count(hs.engine, tables.executions, user) == 5
    status, out = server.http("DELETE", f"/users/{user}/history", token=operator_token())
    assert status == 200, out
    assert out["database"] == {"payloads": 0, "events": 1, "executions": 5}
    assert out["redis"] == {"tasks": 1, "states": 1, "live": 1}
    assert _count(hs.engine, tables.executions, user) == 0
    assert _count(hs.engine, tables.execution_events, user) == 0
    assert _count(hs.engine, tables.executions, other) == 1
    assert client.keys(f"aiecs:t:{user}:{ended}:*") == []
    # the execution still waiting keeps its state and log (its worker and watchers need
    # them), and it still runs or can be cancelled
    assert client.exists(f"aiecs:t:{user}:{waiting}:log",
                         f"aiecs:t:{user}:{waiting}:1:state") == 2
    assert server.http("GET", f"/executions/{ended}/1", token=tok)[0] == 404
    assert server.http("GET", f"/executions/{waiting}/1", token=tok)[1]["source"] == "redis"
    assert server.http("DELETE", f"/tasks/{waiting}", token=tok)[0] == 202
    client.close()


def test_executions_a_real_worker_ran_are_shown_from_redis(hs, worker):
    """A completed and a failed execution, run by a real worker, read while their state is
    in Redis: the row from the state (usage, times, error), the step's events."""
    from tests.support.events import wait_until

    server, user = hs.server, uid()
    tok = server.token(user)
    ids = {}
    for name, data in (("ok", {"text": "hello big world", "chunks": 3}),
                       ("bad", {"text": "x", "fail": "auth"})):
        status, out = server.http("POST", "/tasks", {
            "mode": "test", "service": "echo", "task_name": "echo", "input_data": data},
            token=tok)
        assert status == 202, out
        ids[name] = out["task_id"]

    def ended(task_id):
        status, view = server.http("GET", f"/executions/{task_id}/1", token=tok)
        return view if status == 200 and view["execution"]["finished_at"] else None

    ok = wait_until(lambda: ended(ids["ok"]), timeout=60, message="echo completed")
    row = ok["execution"]
    assert ok["source"] == "redis" and row["status"] == "completed"
    assert (row["mode"], row["service"], row["operation"], row["model"]) == (
        "test", "echo", "echo", "echo-1")
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (
        3, 3, "reported")
    assert row["run_ms"] is not None and row["queue_wait_ms"] is not None
    assert row["deliveries"] == 1 and row["celery_id"]
    kinds = [(e["type"], e["status"]) for e in ok["events"]]
    assert kinds[0] == ("status", "pending") and kinds[-1] == ("status", "completed")
    assert "".join(e["delta"] for e in ok["events"] if e["type"] == "stream") == (
        "hello big world")
    bad = wait_until(lambda: ended(ids["bad"]), timeout=60, message="echo failed")["execution"]
    assert (bad["status"], bad["error_type"]) == ("failed", "AuthenticationError")
    assert "echo was told to fail with auth" in bad["error_message"]
    assert bad["input_tokens"] == 0 and bad["usage_source"] == "unknown"
    # once recorded, the database's row is shown (it knows what the state forgot: the
    # request's mode and service, the worker), the events still from Redis
    insert_rows(hs.engine, [execution(user, ids["bad"], 1_780_000_000.0, mode="test",
                                      service="echo", operation="echo", status="failed",
                                      worker="w1@host")])
    status, view = server.http("GET", f"/executions/{ids['bad']}/1", token=tok)
    assert view["source"] == "redis" and view["events"][-1]["status"] == "failed"
    assert (view["execution"]["worker"], view["execution"]["service"]) == ("w1@host", "echo")
    assert isinstance(view["execution"]["id"], int)
