"""The budget scripts on the session's Redis, without a worker: the terminal transition's
settlement rules (real cost; usage that never arrived keeps its reservation; large
amounts), and a submission refused by a quota after its
reservation leaves nothing reserved."""

from __future__ import annotations

import json

import pytest
from aiecs_core import QuotaExceededError, TaskEvent, TaskRequest, TaskStatus

PRICES = json.dumps({"openai/gpt-x": {"input": 1000, "output": 1000}})
NANO = 1_000_000_000
INPUT = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}],
         "max_output_tokens": 100}


@pytest.fixture
def budgets_on(aiecs_redis, submitter_env):
    submitter_env(AIECS_PRICES=PRICES, AIECS_BUDGETS=json.dumps(
        [{"period": "day", "kind": "usd", "hard": 1e9},
         {"period": "month", "kind": "tokens", "hard": 1e12}]))
    return aiecs_redis.client()


def request(task_id: str) -> TaskRequest:
    return TaskRequest(task_name="chat", user_id="ann", task_id=task_id, step=1, mode="llm",
                       service="openai", input_data=INPUT, context={})


def reserve(client, task_id: str) -> tuple[str, int, int]:
    from aiecs_worker.store import admission, budgets
    from aiecs_worker.store.events import TaskKeys

    key = TaskKeys("ann", task_id).state(1)
    req = request(task_id)
    admission.reserve("ann", [(key, admission.operation(req), req.input_data)],
                      client=client)
    hold = client.hgetall(budgets.hold_key(key))
    return key, int(hold[b"usd"]), int(hold[b"tok"])


def finish(client, key: str, task_id: str, usage: list[dict], deliveries: int = 1) -> None:
    from aiecs_worker.store.events import finish_sync
    from aiecs_worker.store.records import terminal_fields

    client.hset(key, mapping={"status": "running", "deliveries": deliveries})
    event = TaskEvent(type="status", task_id=task_id, step=1, user_id="ann",
                      task_name="chat", status=TaskStatus.COMPLETED)
    assert finish_sync(client, event, key, terminal_fields(
        TaskStatus.COMPLETED, 60, result={}, usage=usage), "socketio", 100, 60) > 0


def spent(client) -> dict[str, int]:
    [day] = client.scan_iter(match="aiecs:budget:ann:day:*")
    return {k.decode(): int(v) for k, v in client.hgetall(day).items()}


def usage(cost, *, tokens=(10, 20), estimated=False) -> dict:
    return {"provider": "openai", "model": "gpt-x", "input_tokens": tokens[0],
            "output_tokens": tokens[1], "cost": cost, "estimated": estimated}


def test_settlement_rules(budgets_on):
    client = budgets_on
    # the real cost and tokens replace the reservation
    key, r_usd, r_tok = reserve(client, "t1")
    assert r_usd > 0 and r_tok > 100
    assert spent(client)["usd_held"] == r_usd
    finish(client, key, "t1", [usage(0.0123)])
    c = spent(client)
    assert (c["usd_held"], c["usd_spent"], c["tok_held"], c["tok_spent"]) == (
        0, 12_300_000, 0, 30)
    assert not client.exists(key + ":budget")
    # a record without a cost (or estimated) keeps the reservation for money
    key, r_usd, _ = reserve(client, "t2")
    finish(client, key, "t2", [usage(0.0001), usage(None)])
    assert spent(client)["usd_spent"] == 12_300_000 + r_usd
    key, r_usd, _ = reserve(client, "t3")
    finish(client, key, "t3", [usage(None, estimated=True)])
    assert spent(client)["usd_spent"] == 12_300_000 + 2 * r_usd
    # an execution delivered twice (an attempt lost with its worker): at least reserved
    key, r_usd, r_tok = reserve(client, "t4")
    before = spent(client)
    finish(client, key, "t4", [usage(0.000001, tokens=(1, 1))], deliveries=2)
    after = spent(client)
    assert after["usd_spent"] - before["usd_spent"] == r_usd
    assert after["tok_spent"] - before["tok_spent"] == r_tok
    # a cost past 1e14 nano-dollars ($100,000) settles exactly: integers throughout
    key, r_usd, _ = reserve(client, "t5")
    finish(client, key, "t5", [usage(123_456.789)])
    assert spent(client)["usd_spent"] - after["usd_spent"] == 123_456_789_000_000
    assert spent(client)["usd_held"] == 0
    # finishing again changes nothing (the terminal transition runs once)
    from aiecs_worker.store.events import finish_sync
    from aiecs_worker.store.records import terminal_fields

    final = spent(client)
    event = TaskEvent(type="status", task_id="t5", step=1, user_id="ann", task_name="chat",
                      status=TaskStatus.COMPLETED)
    assert finish_sync(client, event, key, terminal_fields(
        TaskStatus.COMPLETED, 60, usage=[usage(9.0)]), "socketio", 100, 60) == 0
    assert spent(client) == final
    # sending an execution that ended again reserves nothing (it will not run again)
    from aiecs_worker.store import admission

    req = request("t5")
    admission.reserve("ann", [(key, admission.operation(req), req.input_data)],
                      client=client)
    assert spent(client) == final and not client.exists(key + ":budget")


def test_a_quota_refusal_releases_the_reservation(budgets_on, submitter_env):
    client = budgets_on
    submitter_env(AIECS_USER_SUBMIT_BURST="1", AIECS_USER_SUBMIT_RATE="0.01")
    from aiecs_worker.store import admission

    admission.check_request(request("q1"), client=client)
    held = spent(client)["usd_held"]
    assert held > 0
    with pytest.raises(QuotaExceededError):
        admission.check_request(request("q2"), client=client)
    assert spent(client)["usd_held"] == held  # q2's reservation undone
    assert not client.exists("aiecs:t:ann:q2:1:state:budget")


@pytest.mark.parametrize(("value", "problem"), [
    ('[{"period": "week", "kind": "usd", "hard": 1}]', "'day' or 'month'"),
    ('[{"period": "day", "kind": "usd"}]', "give a soft or a hard limit"),
    ('[{"period": "day", "kind": "usd", "soft": 2, "hard": 1}]', "must not be above hard"),
    ('[{"period": "day", "kind": "usd", "hard": 1}, {"period": "day", "kind": "usd", '
     '"soft": 1}]', "day/usd twice"),
    ("nope", "Expecting value"),
])
def test_a_bad_budgets_setting_stops_the_process_naming_it(value, problem):
    from aiecs_core import ConfigurationError
    from aiecs_worker.settings import Settings

    with pytest.raises(ConfigurationError) as info:
        Settings.load({"AIECS_BUDGETS": value})
    assert info.value.env_var == "AIECS_BUDGETS" and problem in info.value.message


def test_budgets_are_off_unless_set():
    from aiecs_worker.settings import Settings

    assert Settings.load({}).aiecs_budgets is None
    assert Settings.load({"AIECS_BUDGETS": ""}).aiecs_budgets is None
    assert Settings.load({"AIECS_BUDGETS": "[]"}).aiecs_budgets == []


def test_a_delay_reserves_in_the_script_that_records_it(aiecs_redis, submitter_env):
    """``.delay`` / ``apply_async`` reserves with its PENDING record (one script): a
    refusal (a hard limit, an unpriced model) records and reserves nothing; the
    submission reaching the soft limit warns after its PENDING event; the same execution
    sent again is not charged again; a period counter gets its TTL when its first
    reservation creates it."""
    from aiecs_core import BudgetExceededError
    from aiecs_worker import execute_task
    from aiecs_worker.store import budgets
    from aiecs_worker.store.events import TaskKeys

    from tests.support.events import read_events

    submitter_env(AIECS_PRICES=PRICES, AIECS_BUDGETS=json.dumps(
        [{"period": "day", "kind": "usd", "soft": 0.1, "hard": 0.2}]))
    client = aiecs_redis.client()

    def send(task_id: str, **changes):
        return execute_task.apply_async(kwargs={
            "task_name": "chat", "user_id": "ann", "task_id": task_id, "step": 1,
            "mode": "llm", "service": "openai", "input_data": {**INPUT, **changes},
            "context": {}}, countdown=600)  # held in Redis: no worker takes it

    send("d1")
    key = TaskKeys("ann", "d1").state(1)
    r_usd = int(client.hget(budgets.hold_key(key), "usd"))
    assert 0.1 * NANO <= r_usd <= 0.2 * NANO < 2 * r_usd  # one reaches the soft limit,
    # two pass the hard one
    assert client.hget(key, "status") == b"pending"
    c = spent(client)
    assert c["usd_held"] == r_usd
    [day] = client.scan_iter(match="aiecs:budget:ann:day:*")
    assert 0 < client.ttl(day) <= budgets.COUNTER_TTL["day"]
    events = read_events(client, "ann", "d1")
    assert [e["status"] for e in events] == ["pending", "pending"]
    assert events[1]["type"] == "progress" and events[1]["message"].startswith(
        "budget warning: daily spend")

    with pytest.raises(BudgetExceededError, match="daily usd hard limit of \\$0.2") as exc:
        send("d2")
    assert exc.value.period == "day" and exc.value.kind == "usd"
    with pytest.raises(BudgetExceededError, match="has no price in AIECS_PRICES"):
        send("d3", model="gpt-unpriced")
    for refused in ("d2", "d3"):
        key2 = TaskKeys("ann", refused).state(1)
        assert not client.exists(key2) and not client.exists(budgets.hold_key(key2))
        assert read_events(client, "ann", refused) == []
    assert spent(client)["usd_held"] == r_usd

    send("d1")  # the same execution again: it has a state, nothing more is reserved
    assert spent(client)["usd_held"] == r_usd
    assert len(read_events(client, "ann", "d1")) == 2
