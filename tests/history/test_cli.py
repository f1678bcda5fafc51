"""``aiecs history``, ``aiecs usage`` and ``aiecs forget``, run as a user runs them (a
subprocess), against a real server on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import redis
from aiecs_history import tables
from aiecs_worker.server.tokens import issue_token
from sqlalchemy import func, select

from tests.history.rows import execution, fresh_engine, insert_rows
from tests.support.processes import SECRET

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z


def aiecs(*args: str, env: dict[str, str] | None = None,
          stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiecs_worker.cli", *args],
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=90, input=stdin)


def _env(server, user: str, *, operator: bool = False) -> dict[str, str]:
    token = issue_token(user, SECRET, 600, scopes=("operator",) if operator else ())
    return {"AIECS_TOKEN": token, "AIECS_SERVER_URL": server.url}


def _user() -> str:
    return "c" + uuid.uuid4().hex[:10]


def test_history_pages_json_and_export(history_server):
    server, user = history_server.server, _user()
    engine = fresh_engine(history_server.database_url)
    insert_rows(engine, [execution(user, f"task{i}", T0 + i, cost=0.5 if i else None,
                                   status="failed" if i == 4 else "completed")
                         for i in range(5)])
    engine.dispose()
    env = _env(server, user)
    out = aiecs("history", "--limit", "2", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["FINISHED", "(UTC)", "TASK"]
    assert lines[1].split()[:3] == ["2026-01-01", "00:00:04", "task4/1"]
    assert "failed" in lines[1] and "$0.5000" in lines[1]
    assert len(lines) == 3 and "more: --cursor " in out.stderr
    cursor = out.stderr.split("--cursor ")[1].split()[0]
    page = json.loads(aiecs("history", "--limit", "2", "--cursor", cursor, "--json",
                            env=env).stdout)
    assert [r["task_id"] for r in page["items"]] == ["task2", "task1"]
    out = aiecs("history", "--all", "--limit", "2", env=env)
    assert [ln.split()[2] for ln in out.stdout.splitlines() if ln.startswith("2026")] == [
        f"task{i}/1" for i in reversed(range(5))]
    assert "more:" not in out.stderr
    out = aiecs("history", "--ndjson", "--status", "completed", env=env)
    rows = [json.loads(ln) for ln in out.stdout.splitlines()]
    assert out.returncode == 0 and [r["task_id"] for r in rows] == [
        "task3", "task2", "task1", "task0"]
    # another user's without an operator token: refused, with the reason
    out = aiecs("history", "--for-user", "someone", env=env)
    assert out.returncode == 5 and "operator token" in out.stderr and "403" in out.stderr
    out = aiecs("history", "--since", "yesterday", env=env)
    assert out.returncode == 5 and "since must be an ISO-8601 time" in out.stderr


def test_usage(history_server):
    server, user = history_server.server, _user()
    engine = fresh_engine(history_server.database_url)
    insert_rows(engine, [execution(user, "a", T0, input_tokens=100, output_tokens=7),
                         execution(user, "b", T0 + 1, model="grok-3", cost=None)])
    engine.dispose()
    out = aiecs("usage", "--by", "model", env=_env(server, user))
    assert out.returncode == 0, out.stderr
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.stdout.splitlines()[1:]}
    assert rows["gpt-4o-mini"] == ["1", "100", "7", "$0.0010"]
    assert rows["grok-3"] == ["1", "10", "20", "-", "(1", "unpriced)"]
    assert rows["total"][:3] == ["2", "110", "27"]
    as_json = json.loads(aiecs("usage", "--by", "day", "--json", "--for-user", user,
                               env=_env(server, "ops", operator=True)).stdout)
    assert as_json["groups"] == [{"key": "2026-01-01", "executions": 2, "input_tokens": 110,
                                  "output_tokens": 27, "cost": 0.001, "unpriced": 1}]


def test_forget_asks_first_then_deletes(history_server):
    user, other = _user(), _user()
    engine = fresh_engine(history_server.database_url)
    insert_rows(engine, [execution(user, f"t{i}", T0 + i) for i in range(3)]
                + [execution(other, "t0", T0)])
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.hset(f"aiecs:t:{user}:old:1:state", mapping={"status": "completed", "step": "1"})
    client.sadd(f"aiecs:t:{user}:old:steps", "1")
    client.xadd(f"aiecs:t:{user}:old:log", {"e": "{}"}, id="1-0")
    env = {"AIECS_DATABASE_URL": history_server.database_url}

    def count(who):
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(tables.executions)
                                .where(tables.executions.c.user_id == who)).scalar()

    out = aiecs("forget", user, env=env, stdin="n\n")
    assert out.returncode == 1 and "Aborted" in out.stderr
    assert count(user) == 3
    out = aiecs("forget", user, "--yes", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"forgot {user}: 3 executions, 0 payloads, 0 event logs; "
                                  "Redis: 1 tasks, 1 ended executions")
    assert count(user) == 0 and count(other) == 1
    assert client.keys(f"aiecs:t:{user}:*") == []
    assert aiecs("forget", "bad user", "--yes", env=env).returncode == 2
    client.close()
    engine.dispose()
