"""Budgets per user (issue 18) on real parts: a real server process, real workers, the
session's Redis and a local server speaking OpenAI's wire protocol.

- 200 concurrent submissions (100 ``POST /tasks``, 100 ``execute_task.delay``) against a
  small money budget: exactly as many are admitted as fit under the hard limit, the others
  are refused with 402 / BudgetExceededError and leave nothing queued, and once they ran
  the real spend is what their usage says, under the cap;
- the reservation is replaced by the real cost at the end, kept for usage that never
  arrived (a cut stream), released for an execution that never started; the soft limit
  warns once; a model without a price is refused under a money budget;
- operators set budgets (``PUT /budgets/{user}`` with the ``operator`` scope; 403 without),
  users read theirs (``GET /budget``), and the CLI does both;
- batches (all items or none), workflows (first steps at submission, a later step when
  released) and schedule runs are held to the same budget.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiecs_core import BudgetExceededError

from tests.server.helpers import uid
from tests.support.events import read_events, wait_terminal, wait_until
from tests.support.fake_openai import Cut, FakeOpenAI, Text

#: $1,000 per million tokens either way: one token costs a tenth of a cent.
PRICES = json.dumps({"openai/gpt-x": {"input": 1000, "output": 1000}})
NANO = 1_000_000_000
MESSAGES = [{"role": "user", "content": "hello there"}]


def chat(model: str = "gpt-x", max_output_tokens: int = 50, **extra):
    return {"mode": "llm", "service": "openai", "task_name": "chat",
            "input_data": {"model": model, "messages": MESSAGES,
                           "max_output_tokens": max_output_tokens}, **extra}


def reservation_usd(input_data: dict) -> float:
    """What one chat reserves, computed here from the rule (input JSON at 4 characters a
    token + max_output_tokens, at the list price)."""
    tokens = math.ceil(len(json.dumps(input_data, separators=(",", ":"))) / 4)
    return (tokens + input_data["max_output_tokens"]) * 1000 / 1_000_000


def budgets_env(budgets: list[dict], **extra: str) -> dict[str, str]:
    return {"AIECS_PRICES": PRICES, "AIECS_BUDGETS": json.dumps(budgets), **extra}


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def openai_env(fake: FakeOpenAI) -> dict[str, str]:
    return {"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url}


def counters(client, user: str) -> dict[str, int]:
    """The user's day counter (the test runs within one day... or across midnight: both
    periods are read and must agree)."""
    day = [k for k in client.scan_iter(match=f"aiecs:budget:{user}:day:*")]
    month = [k for k in client.scan_iter(match=f"aiecs:budget:{user}:month:*")]
    assert len(day) == 1 and len(month) == 1, (day, month)
    d = {k.decode(): int(v) for k, v in client.hgetall(day[0]).items()}
    m = {k.decode(): int(v) for k, v in client.hgetall(month[0]).items()}
    for f in ("usd_spent", "usd_held", "tok_spent", "tok_held"):
        assert d.get(f, 0) == m.get(f, 0), (d, m)
    return d


def state(client, user: str, task_id: str, step: int = 1) -> dict:
    raw = client.hgetall(f"aiecs:t:{user}:{task_id}:{step}:state")
    return {k.decode(): v.decode() for k, v in raw.items()}


def queued(client) -> int:
    return sum(client.llen(k) for k in client.scan_iter(match="*_tasks*")
               if client.type(k) == b"list")


def test_200_concurrent_submissions_never_overspend(aiecs_redis, start_server, start_worker,
                                                   fake, submitter_env):
    hard = 1.0
    env = budgets_env([{"period": "month", "kind": "usd", "hard": hard}])
    server = start_server(aiecs_redis.url, env=env)
    submitter_env(**env)  # this process submits with .delay(), with the same settings
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    user = uid()
    token = server.token(user)
    body = chat()
    per = reservation_usd(body["input_data"])
    fits = int(hard // per)
    assert 5 < fits < 100  # a small budget: most of the 200 must be refused

    def over_http(i: int) -> tuple[str, str, object]:
        status, out = server.http("POST", "/tasks", {**body, "task_id": f"h{i}"},
                                  token=token)
        return ("http", f"h{i}", status if status != 202 else "ok")

    def by_delay(i: int) -> tuple[str, str, object]:
        try:
            execute_task.delay(task_name="chat", user_id=user, task_id=f"d{i}", step=1,
                               mode="llm", service="openai", input_data=body["input_data"],
                               context={})
        except BudgetExceededError as exc:
            return ("delay", f"d{i}", exc)
        return ("delay", f"d{i}", "ok")

    # no worker yet: every admitted execution keeps its whole reservation meanwhile
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(over_http if i % 2 else by_delay, i) for i in range(200)]
        outcomes = [f.result() for f in futures]
    admitted = [tid for _, tid, out in outcomes if out == "ok"]
    refused = [(kind, tid, out) for kind, tid, out in outcomes if out != "ok"]
    assert len(admitted) == fits, (len(admitted), fits, per)
    assert len(refused) == 200 - fits
    assert {o for k, _, o in refused if k == "http"} == {402}
    for _, _, exc in (r for r in refused if r[0] == "delay"):
        assert isinstance(exc, BudgetExceededError) and exc.kind == "usd", exc
        assert exc.period == "month" and exc.limit == hard
    # nothing of a refused submission was recorded or queued
    assert all(not state(client, user, tid) for _, tid, _ in refused)
    assert all(state(client, user, tid)["status"] == "pending" for tid in admitted)
    assert queued(client) == fits
    c = counters(client, user)
    assert c["usd_held"] == round(fits * per * NANO) and c.get("usd_spent", 0) == 0
    assert c["usd_held"] <= hard * NANO
    # a refusal over HTTP says why, with the numbers
    status, err = server.http("POST", "/tasks", body, token=token)
    assert status == 402, err
    e = err["error"]
    assert e["type"] == "BudgetExceededError" and "hard limit of $1" in e["message"]
    assert e["period"] == "month" and e["kind"] == "usd" and e["limit"] == hard
    assert e["requested"] == pytest.approx(per) and e["committed"] == pytest.approx(fits * per)
    assert "resets_at" in e

    # the admitted ones run: each reservation is replaced by the real cost
    start_worker(env={**openai_env(fake), **env})
    for tid in admitted:
        terminal, _ = wait_terminal(client, user, tid, timeout=60)
        assert terminal["status"] == "completed", terminal
    real = sum(u["cost"] for tid in admitted
               for u in json.loads(state(client, user, tid)["usage"]))
    wait_until(lambda: counters(client, user).get("usd_held") == 0, timeout=10,
               message="every reservation settled")
    c = counters(client, user)
    assert c["usd_spent"] == round(real * NANO) and 0 < real <= hard
    assert not list(client.scan_iter(match=f"aiecs:t:{user}:*:budget"))  # holds gone
    # the room the real costs left is usable again
    status, view = server.http("GET", "/budget", token=token)
    assert status == 200 and view["budgets"][0]["spent"] == pytest.approx(real)
    assert view["budgets"][0]["reserved"] == 0
    assert view["budgets"][0]["remaining"] == pytest.approx(hard - real)
    assert server.http("POST", "/tasks", body, token=token)[0] == 202
    _, metrics = server.http("GET", "/metrics")
    assert 'aiecs_budget_refusals_total{kind="usd",period="month"}' in metrics


def test_settlement_warning_and_unpriced_models(aiecs_redis, start_server, start_worker,
                                                fake):
    body = chat()
    per = reservation_usd(body["input_data"])
    env = budgets_env([{"period": "day", "kind": "usd", "soft": 2.5 * per, "hard": 100.0},
                       {"period": "day", "kind": "tokens", "hard": 10_000}])
    server = start_server(aiecs_redis.url, env=env)
    start_worker(env={**openai_env(fake), **env})
    client = aiecs_redis.client()
    user = uid()
    token = server.token(user)

    # 1. a completed chat: reservation out, real cost and tokens in
    fake.script(Text("one two three"))
    status, out = server.http("POST", "/tasks", body, token=token)
    assert status == 202, out
    terminal, events = wait_terminal(client, user, out["task_id"])
    assert terminal["status"] == "completed"
    [usage] = terminal["usage"]
    assert usage["cost"] > 0 and not usage["estimated"]
    c = counters(client, user)
    assert c["usd_held"] == 0 and c["usd_spent"] == round(usage["cost"] * NANO)
    assert c["tok_held"] == 0
    assert c["tok_spent"] == usage["input_tokens"] + usage["output_tokens"]
    assert not any("budget warning" in (e.get("message") or "") for e in events)
    spent = c["usd_spent"]

    # 2. a stream cut mid-way: its usage is an estimate, so its reservation is kept
    fake.script(Cut(after_chunks=2))
    stream_input = {**body["input_data"], "stream": True}
    status, out = server.http("POST", "/tasks", {**body, "input_data": stream_input},
                              token=token)
    assert status == 202, out
    terminal, _ = wait_terminal(client, user, out["task_id"])
    assert terminal["status"] == "failed" and terminal["usage"][0]["estimated"], terminal
    kept = round(reservation_usd(stream_input) * NANO)
    c = counters(client, user)
    assert c["usd_held"] == 0 and c["usd_spent"] == spent + kept
    spent = c["usd_spent"]

    # 3. cancelled before it started: nothing spent, the reservation released
    status, out = server.http("POST", "/tasks", chat(countdown=600), token=token)
    assert status == 202
    assert counters(client, user)["usd_held"] == round(per * NANO)
    assert server.http("DELETE", f"/tasks/{out['task_id']}", token=token)[0] == 202
    wait_terminal(client, user, out["task_id"])
    c = counters(client, user)
    assert c["usd_held"] == 0 and c["usd_spent"] == spent

    # 4. the soft limit (2.5 reservations) warns once, on the submission that reaches it
    warned = []
    for _ in range(3):
        status, out = server.http("POST", "/tasks", chat(countdown=600), token=token)
        assert status == 202
        events = read_events(client, user, out["task_id"])
        warning = [e for e in events if (e.get("message") or "").startswith("budget warning")]
        if warning:  # after the PENDING event, which opened the task's log
            assert events[0]["status"] == "pending" and events[0]["type"] == "status"
            assert warning[0]["seq"] > events[0]["seq"]
        warned += warning
    assert len(warned) == 1, warned
    assert warned[0]["type"] == "progress" and "soft limit" in warned[0]["message"]

    # 5. the tokens budget refuses what does not fit (max_output_tokens counts)
    status, err = server.http("POST", "/tasks", chat(max_output_tokens=9_900), token=token)
    assert status == 402 and err["error"]["kind"] == "tokens", err
    assert err["error"]["period"] == "day" and err["error"]["limit"] == 10_000

    # 6. a model without a price is refused under a money budget: its cost is unknowable
    status, err = server.http("POST", "/tasks", chat(model="gpt-unpriced"), token=token)
    assert status == 402 and err["error"]["reason"] == "unpriced", err
    assert "AIECS_PRICES" in err["error"]["message"]
    # ... and reserves tokens only when there is no money budget
    operator = _operator_token(server)
    assert server.http("PUT", f"/budgets/{user}", {"budgets": [
        {"period": "day", "kind": "tokens", "hard": 10_000}]}, token=operator)[0] == 200
    status, out = server.http("POST", "/tasks", chat(model="gpt-unpriced", countdown=600),
                              token=token)
    assert status == 202, out


def _operator_token(server) -> str:
    from aiecs_worker.server.tokens import issue_token

    return issue_token("boss", server.secret, 600, scopes=("operator",))


def test_operator_routes_and_cli(aiecs_redis, start_server):
    # budgets are off until AIECS_BUDGETS is set: nothing to read, nothing to set
    off = start_server(aiecs_redis.url)
    status, view = off.http("GET", "/budget", token=off.token("u1"))
    assert status == 200 and view["source"] == "off" and view["budgets"] == []
    status, err = off.http("PUT", "/budgets/u1", {"budgets": []}, token=_operator_token(off))
    assert status == 409 and "AIECS_BUDGETS" in err["error"]["message"], err
    assert off.http("POST", "/tasks", chat(countdown=600), token=off.token("u1"))[0] == 202
    assert not list(aiecs_redis.client().scan_iter(match="aiecs:budget:*"))
    off.stop()

    server = start_server(aiecs_redis.url, env=budgets_env(
        [{"period": "month", "kind": "usd", "soft": 8, "hard": 10}]))
    user = uid()
    token, operator = server.token(user), _operator_token(server)
    status, view = server.http("GET", "/budget", token=token)
    assert status == 200 and view["source"] == "default"
    [row] = view["budgets"]
    assert row == {"period": "month", "kind": "usd", "soft": 8.0, "hard": 10.0, "spent": 0.0,
                   "reserved": 0.0, "remaining": 10.0, "resets_at": row["resets_at"]}
    assert row["resets_at"].endswith("-01T00:00:00Z")
    new = {"budgets": [{"period": "day", "kind": "tokens", "soft": 100, "hard": 200}]}
    # a user token may neither set nor read another user's budgets
    assert server.http("PUT", f"/budgets/{user}", new, token=token)[0] == 403
    assert server.http("GET", f"/budgets/{user}", token=token)[0] == 403
    assert server.http("PUT", f"/budgets/{user}", new)[0] == 401
    status, err = server.http("PUT", f"/budgets/{user}", {"budgets": [
        {"period": "day", "kind": "usd", "soft": 5, "hard": 1}]}, token=operator)
    assert status == 422 and "soft" in err["error"]["message"], err
    status, view = server.http("PUT", f"/budgets/{user}", new, token=operator)
    assert status == 200 and view["source"] == "user", view
    assert server.http("GET", "/budget", token=token)[1]["budgets"] == view["budgets"]
    assert view["budgets"][0]["remaining"] == 200
    # null: back to the default
    assert server.http("PUT", f"/budgets/{user}", {"budgets": None},
                       token=operator)[1]["source"] == "default"

    # the CLI: an operator sets, the user reads
    env = {**os.environ, "AIECS_SECRET_KEY": server.secret}
    cli = [sys.executable, "-m", "aiecs_worker.cli", "budget"]
    out = subprocess.run([*cli, "set", user, json.dumps(new["budgets"]), "--server",
                          server.url], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "day   tokens" in out.stdout and "hard 200" in out.stdout, out.stdout
    out = subprocess.run([*cli, "show", "--json", "--server", server.url, "--token", token],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["budgets"][0]["hard"] == 200
    out = subprocess.run([sys.executable, "-m", "aiecs_worker.cli", "token", "boss",
                          "--operator"], env=env, capture_output=True, text=True, timeout=60)
    from aiecs_worker.server.tokens import is_operator, verify_token

    assert is_operator(verify_token(out.stdout.strip(), server.secret))
    assert not is_operator(verify_token(token, server.secret))


def test_batches_workflows_and_schedules_keep_to_the_budget(
        aiecs_redis, start_server, start_worker, fake, submitter_env):
    body = chat()
    per = reservation_usd(body["input_data"])
    hard = 3.5 * per  # room for three reservations
    env = budgets_env([{"period": "day", "kind": "usd", "hard": hard}])
    server = start_server(aiecs_redis.url, env=env)
    client = aiecs_redis.client()
    user = uid()
    token = server.token(user)
    item = {k: body[k] for k in ("mode", "service", "task_name", "input_data")}

    # a batch that does not fit queues nothing, not even the items that would
    status, err = server.http("POST", "/batches", {"items": [item] * 4}, token=token)
    assert status == 402, err
    assert queued(client) == 0 and counters_or_none(client, user) in (None, 0)
    # a workflow's first steps reserve at submission: two of them (plus one later) fit
    steps = [{"step": 1, **item}, {"step": 2, **item},
             {"step": 3, **item, "depends_on": [1, 2],
              "input_data": {**item["input_data"], "max_output_tokens": 2000}}]
    status, out = server.http("POST", "/workflows", {"steps": steps}, token=token)
    assert status == 202, out
    flow = out["task_id"]
    assert counters(client, user)["usd_held"] == round(2 * per * NANO)
    # a batch of two no longer fits; of one it does
    assert server.http("POST", "/batches", {"items": [item] * 2}, token=token)[0] == 402
    status, out = server.http("POST", "/batches", {"items": [item]}, token=token)
    assert status == 202, out
    # and a workflow whose first step no longer fits is refused whole
    status, err = server.http("POST", "/workflows", {"task_id": "late", "steps": [
        {"step": 1, **item}, {"step": 2, **item, "depends_on": [1]}]}, token=token)
    assert status == 402 and err["error"]["type"] == "BudgetExceededError", err
    assert not state(client, user, "late") and not state(client, user, "late", 2)
    # the workflow's step 3 asks for far more when it is released: it ends FAILED, saying
    # why, and nothing of it is spent
    start_worker(env={**openai_env(fake), **env})
    terminal, _ = wait_terminal(client, user, flow, step=3, timeout=60)
    assert terminal["status"] == "failed", terminal
    assert terminal["error"]["type"] == "BudgetExceededError", terminal
    wait_until(lambda: counters(client, user)["usd_held"] == 0, timeout=30,
               message="the batch and workflow settled")
    assert 0 < counters(client, user)["usd_spent"] <= hard * NANO

    # a schedule's run that does not fit ends FAILED at once
    submitter_env(**env)
    from aiecs_worker.producer import schedules

    client.hset(f"aiecs:budget:{user}:limits", mapping={"set": 1, "day:usd:hard": 1})
    sched = schedules.Schedule(user_id=user, task_id=f"s{uuid.uuid4().hex[:8]}", every=60,
                               **item)
    schedules.create(sched)
    step = schedules.fire(user, sched.task_id, "first")
    terminal, _ = wait_terminal(client, user, sched.task_id, step=step)
    assert terminal["status"] == "failed"
    assert terminal["error"]["type"] == "BudgetExceededError", terminal
    schedules.delete(user, sched.task_id)


def counters_or_none(client, user: str):
    keys = list(client.scan_iter(match=f"aiecs:budget:{user}:day:*"))
    if not keys:
        return None
    return int(client.hget(keys[0], "usd_held") or 0)
