"""A malformed broker message never crashes a worker (``aiecs_worker.runner.poison``).

Each kind of malformed message is pushed straight onto the Redis list ``fast_tasks`` in
kombu's envelope format (a real envelope, published while no worker runs, then mutated).
The worker must dead-letter it with a reason, log it once, acknowledge it (neither in the
queue nor in kombu's ``unacked`` hash), stay alive and serve the next valid task, under
both the threads and the prefork pool.
"""

from __future__ import annotations

import base64
import copy
import json
import pickle
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.events import read_events, wait_terminal, wait_until

DEADLETTER = "aiecs:deadletter"
FAST = "aiecs.tasks.worker.execute_task"
USER = "poison"


def task_kwargs(task_id: str) -> dict[str, Any]:
    return dict(task_name="echo", user_id=USER, task_id=task_id, step=1, mode="test",
                service="echo", input_data={"text": "hi"}, context={})


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def jbody(obj: Any) -> str:
    return b64(json.dumps(obj))


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


class _Touch:
    """Unpickling this creates a file: proof that a pickle body was (not) loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


PICKLED = Path(f"/tmp/aiecs-poison-{uuid.uuid4().hex[:8]}")


# A kind builds the raw list item from a fresh valid envelope (a dict it may change).
Build = Callable[[dict[str, Any]], "dict[str, Any] | str | bytes"]


@dataclass
class Kind:
    name: str
    build: Build
    reason: str  # text the dead-letter reason must contain
    layer: str = "consumer"
    routable: bool = False  # its execution must end FAILED with the reason


def headers(**values: Any) -> Build:
    def build(env):
        env["headers"].update(values)
        return env
    return build


def body(obj: Any) -> Build:
    def build(env):
        env["body"] = jbody(obj)
        return env
    return build


def drop(*path: str) -> Build:
    def build(env):
        target = env
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return env
    return build


def put(path: tuple[str, ...], value: Any) -> Build:
    def build(env):
        target = env
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return env
    return build


def v1_body(env):
    del env["headers"]["task"]
    env["body"] = jbody({"task": ["not", "hashable"], "id": "x", "args": [], "kwargs": {}})
    return env


def pickled(env):
    env["content-type"] = "application/x-python-serialize"
    env["content-encoding"] = "binary"
    env["body"] = b64(pickle.dumps(_Touch(str(PICKLED))))
    return env


def zlib_garbage(env):
    env["headers"]["compression"] = "application/x-gzip"
    env["body"] = b64(b"certainly not gzip")
    return env


KINDS = [
    # --- kombu's Redis transport: fails before Celery sees the message -------------------
    Kind("envelope not JSON", lambda env: "not json{", "the envelope is not JSON", "transport"),
    Kind("envelope binary garbage", lambda env: b"\xff\xfe\x00garbage\x80",
         "the envelope is not JSON", "transport"),
    Kind("envelope a JSON array", lambda env: "[1, 2]", "the envelope is a JSON array",
         "transport"),
    Kind("envelope a JSON string", lambda env: '"hello"', "the envelope is a JSON string",
         "transport"),
    Kind("envelope null", lambda env: "null", "the envelope is a JSON null", "transport"),
    Kind("envelope nested 100000 deep", lambda env: "[" * 100_000 + "]" * 100_000,
         "RecursionError", "transport"),
    Kind("envelope nested 200 deep", put(("headers", "x"), nested(200)),
         "the envelope nests deeper than 64 levels", "transport", routable=True),
    Kind("no properties", drop("properties"), "the envelope has no 'properties'", "transport"),
    Kind("properties not an object", put(("properties",), "x"),
         "'properties' is a JSON string", "transport"),
    Kind("no delivery_tag", drop("properties", "delivery_tag"),
         "'properties' has no 'delivery_tag'", "transport", routable=True),
    Kind("delivery_tag an object", put(("properties", "delivery_tag"), {"a": 1}),
         "'delivery_tag' must be a non-empty string", "transport", routable=True),
    Kind("no delivery_info", drop("properties", "delivery_info"),
         "'properties' has no 'delivery_info'", "transport", routable=True),
    Kind("delivery_info a number", put(("properties", "delivery_info"), 5),
         "'delivery_info' is a JSON number", "transport", routable=True),
    Kind("delivery_info without routing_key", drop("properties", "delivery_info", "routing_key"),
         "'delivery_info.routing_key' must be a string", "transport", routable=True),
    Kind("non-base64 body", put(("body",), "%%% not base64 %%%"),
         "the body is not valid base64", "transport"),
    Kind("body a number", put(("body",), 12345), "'body' must be a string", "transport"),
    Kind("unknown body_encoding", put(("properties", "body_encoding"), "rot13"),
         "unknown body_encoding 'rot13'", "transport"),
    Kind("headers an array", put(("headers",), ["task"]), "'headers' is a JSON array",
         "transport"),
    Kind("headers a string", put(("headers",), FAST), "'headers' is a JSON string",
         "transport"),
    Kind("content-type a number", put(("content-type",), 5), "'content-type' must be a string",
         "transport", routable=True),
    # --- the body (protocol 2: [args, kwargs, embed]) -------------------------------------
    Kind("body []", body([]), "must be [args, kwargs, embed] (protocol 2), not an array of 0"),
    Kind("body {}", body({}), "not a JSON object"),
    Kind("body null", body(None), "not a JSON null"),
    Kind("body 42", body(42), "not a JSON number"),
    Kind("body [1]", body([1]), "not an array of 1"),
    Kind("body a string", body("args"), "not a JSON string"),
    Kind("body args an object", body([{}, {}, {}]), "args must be an array"),
    Kind("body kwargs an array", body([[], [], {}]), "kwargs must be an object"),
    Kind("body embed a number", body([[], {}, 5]), "embed must be an object or null"),
    Kind("body embed unknown key", body([[], {}, {"delivery_info": {}}]),
         "embed has an unknown key 'delivery_info'"),
    Kind("body embed callbacks a string", body([[], {}, {"callbacks": "x"}]),
         "embed 'callbacks' must be a JSON array"),
    Kind("body nested 100 deep", body([[], {"input_data": nested(100)}, {}]),
         "the body nests deeper than 64 levels"),
    Kind("body nested 100000 deep", put(("body",), b64("[" * 100_000 + "]" * 100_000)),
         "the body does not decode"),
    Kind("body not JSON", put(("body",), b64("{{not json")), "the body does not decode"),
    Kind("body not UTF-8", put(("body",), b64(b"\xff\xfe\xfd")), "the body does not decode"),
    Kind("content-type missing", drop("content-type"), "no content-type", routable=True),
    Kind("content-type pickle", pickled, "'application/x-python-serialize' is refused"),
    Kind("content-type application/data", put(("content-type",), "application/data"),
         "must be [args, kwargs, embed]", routable=True),
    Kind("compressed body that is not", zlib_garbage, "the body does not decode"),
    # --- headers Celery relies on -------------------------------------------------------
    Kind("no headers", drop("headers"), "no 'task' header"),
    Kind("protocol 1 body, task unhashable", v1_body, "no 'task' header"),
    Kind("task an array", headers(task=["x"]), "header 'task' must be a non-empty string"),
    Kind("task a number", headers(task=5), "header 'task' must be a non-empty string"),
    Kind("task empty", headers(task=""), "header 'task' must be a non-empty string"),
    Kind("timelimit 'x'", headers(timelimit="x"), "header 'timelimit' must be [hard, soft]",
         routable=True),
    Kind("timelimit [1]", headers(timelimit=[1]), "header 'timelimit'", routable=True),
    Kind("timelimit strings", headers(timelimit=["a", "b"]), "header 'timelimit'",
         routable=True),
    Kind("timelimit negative", headers(timelimit=[-1, 5]), "header 'timelimit'",
         routable=True),
    Kind("stamped_headers 5", headers(stamped_headers=5),
         "header 'stamped_headers' must be a list of strings", routable=True),
    Kind("stamps a string", headers(stamped_headers=["a"], stamps="x"),
         "header 'stamps' must be an object", routable=True),
    Kind("id a number", headers(id=5), "header 'id' must be a non-empty string",
         routable=True),
    Kind("id null", headers(id=None), "header 'id'", routable=True),
    Kind("id missing", drop("headers", "id"), "header 'id'", routable=True),
    Kind("id an object", headers(id={"a": 1}), "header 'id'", routable=True),
    Kind("id 10000 characters", headers(id="x" * 10_000), "at most 255 characters",
         routable=True),
    Kind("retries a string", headers(retries="x"), "header 'retries' must be a non-negative",
         routable=True),
    Kind("eta not a date", headers(eta="not a date"), "header 'eta' 'not a date' is not",
         routable=True),
    Kind("eta a number", headers(eta=5), "header 'eta' must be an ISO 8601 date string",
         routable=True),
    Kind("expires garbage", headers(expires="garbage"), "header 'expires'", routable=True),
    Kind("expires an array", headers(expires=[]), "header 'expires'", routable=True),
    Kind("argsrepr a number", headers(argsrepr=5), "header 'argsrepr' must be a string",
         routable=True),
    Kind("kwargsrepr an object", headers(kwargsrepr={"a": 1}),
         "header 'kwargsrepr' must be a string", routable=True),
    Kind("root_id an array", headers(root_id=[]), "header 'root_id'", routable=True),
    Kind("parent_id an object", headers(parent_id={}), "header 'parent_id'", routable=True),
    Kind("group an array", headers(group=[]), "header 'group'", routable=True),
    Kind("group_index a string", headers(group_index="x"), "header 'group_index'",
         routable=True),
    Kind("shadow a number", headers(shadow=5), "header 'shadow'", routable=True),
    Kind("ignore_result a string", headers(ignore_result="yes"), "header 'ignore_result'",
         routable=True),
    Kind("correlation_id a number", put(("properties", "correlation_id"), 5),
         "property 'correlation_id'", routable=True),
    Kind("priority a string", put(("properties", "priority"), "high"), "property 'priority'",
         routable=True),
    Kind("unknown task with id an object", headers(task="nope.unknown", id={"a": 1}),
         "header 'id'"),
]


def queued(client) -> dict[bytes, int]:
    """Messages waiting in any priority list of the fast queue."""
    return {k: n for k in client.keys("fast_tasks*")
            if client.type(k) == b"list" and (n := client.llen(k))}


@pytest.fixture
def template(aiecs_redis):
    """A valid envelope of ``execute_task``, published while no worker runs."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    execute_task.delay(**task_kwargs("template"))
    [key] = queued(client)
    env = json.loads(client.rpop(key))
    client.flushall()
    return env


def fresh(template: dict[str, Any], index: int) -> tuple[dict[str, Any], str]:
    """A copy of the template with its own ids and its own execution (task id)."""
    env = copy.deepcopy(template)
    task_id = f"p{index}-{uuid.uuid4().hex[:6]}"
    env["body"] = jbody([[], task_kwargs(task_id), {"callbacks": None, "errbacks": None,
                                                     "chain": None, "chord": None}])
    celery_id = str(uuid.uuid4())
    env["headers"].update(id=celery_id, root_id=celery_id)
    env["properties"].update(delivery_tag=str(uuid.uuid4()), correlation_id=celery_id)
    return env, task_id


def raw_of(item: dict[str, Any] | str | bytes) -> bytes:
    if isinstance(item, dict):
        return json.dumps(item).encode()
    return item if isinstance(item, bytes) else item.encode()


def same_message(entry: dict[str, Any], raw: bytes) -> bool:
    """The dead-letter entry holds the injected message (as text, or as the same JSON)."""
    if entry["truncated"]:
        return entry["size"] >= 65_536 and raw.decode(errors="replace").startswith(entry["raw"])
    if entry["raw"] == raw.decode(errors="replace"):
        return True
    try:
        return json.loads(entry["raw"]) == json.loads(raw)
    except ValueError:
        return False


def inject_all(client, worker, template) -> tuple[list[str], dict[str, str]]:
    """Push every kind, one at a time; what is wrong (a line per kind), their task ids."""
    problems: list[str] = []
    task_ids: dict[str, str] = {}
    for index, kind in enumerate(KINDS):
        env, task_id = fresh(template, index)
        raw = raw_of(kind.build(env))
        before = client.llen(DEADLETTER)
        client.lpush("fast_tasks", raw)
        try:
            wait_until(lambda b=before: client.llen(DEADLETTER) > b or not worker.alive(),
                       timeout=15, message=f"{kind.name} dead-lettered")
        except AssertionError:
            problems.append(f"{kind.name}: not dead-lettered within 15 s")
            continue
        if not worker.alive():
            pytest.fail(f"the worker died on {kind.name!r}:\n{worker.log()[-6000:]}")
        entry = json.loads(client.lindex(DEADLETTER, 0))
        if client.llen(DEADLETTER) != before + 1:
            problems.append(f"{kind.name}: {client.llen(DEADLETTER) - before} entries")
        if kind.reason not in entry["reason"]:
            problems.append(f"{kind.name}: reason {entry['reason']!r} lacks {kind.reason!r}")
        if entry["layer"] != kind.layer:
            problems.append(f"{kind.name}: rejected by the {entry['layer']}, not the {kind.layer}")
        if not same_message(entry, raw):
            problems.append(f"{kind.name}: the entry's raw message is not what was sent")
        if not entry["hostname"].startswith(f"{worker.name}@"):
            problems.append(f"{kind.name}: hostname {entry['hostname']!r}")
        if entry["queue"] != "fast_tasks" or not isinstance(entry["time"], float):
            problems.append(f"{kind.name}: queue {entry['queue']!r}, time {entry['time']!r}")
        task_ids[kind.name] = task_id
    return problems, task_ids


def log_problems(worker, client) -> list[str]:
    """Exactly one WARNING line per dead-lettered message, nothing worse in the log."""
    text = worker.log()
    problems = []
    for raw in client.lrange(DEADLETTER, 0, -1):
        entry = json.loads(raw)
        lines = [line for line in text.splitlines() if entry["id"] in line]
        if len(lines) != 1 or "WARNING" not in lines[0] or entry["reason"] not in lines[0]:
            problems.append(f"entry {entry['id']} ({entry['reason'][:60]}): log lines {lines}")
    for bad in ("Traceback", "CRITICAL", "Unrecoverable", "ERROR/"):
        if bad in text:
            problems.append(f"the log has {bad!r}")
    return problems


@pytest.mark.parametrize("pool", ["threads", "prefork", "asyncio"])
def test_malformed_messages_are_dead_lettered_and_the_worker_serves_on(
        aiecs_redis, start_worker, template, pool):
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    worker = start_worker(pool=pool, concurrency=2)
    problems, task_ids = inject_all(client, worker, template)

    # the worker serves the next valid task
    ok = execute_task.delay(**task_kwargs(f"ok-{uuid.uuid4().hex[:6]}")).get(timeout=30)
    assert ok["status"] == "completed"
    assert worker.alive()
    # nothing left behind: not queued, not unacknowledged (restored by the next shutdown)
    wait_until(lambda: not queued(client) and client.hlen("unacked") == 0, timeout=10,
               message="queue and unacked empty")
    assert client.llen(DEADLETTER) == len(KINDS)
    problems += log_problems(worker, client)
    assert not PICKLED.exists(), "a pickle body was loaded"

    # an execution named by a malformed message ends FAILED with the reason
    for kind in KINDS:
        task_id = task_ids.get(kind.name)
        if task_id is None:
            continue
        if kind.routable:
            event, _ = wait_terminal(client, USER, task_id, timeout=10)
            if (event["status"] != "failed" or event["error"]["type"] != "InvalidTaskError"
                    or kind.reason not in event["error"]["message"]):
                problems.append(f"{kind.name}: terminal event {event}")
        elif read_events(client, USER, task_id):
            problems.append(f"{kind.name}: unexpected events for an unroutable message")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


def test_a_worker_started_after_one_that_met_poison_finds_nothing_requeued(
        aiecs_redis, start_worker, template):
    """Poison queued before any worker runs is taken once and never comes back."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    sample = [k for k in KINDS if k.name in {
        "envelope not JSON", "no delivery_tag", "properties not an object", "body []",
        "stamped_headers 5", "task an array", "content-type pickle"}]
    for index, kind in enumerate(sample):
        client.lpush("fast_tasks", raw_of(kind.build(fresh(template, index)[0])))
    # a well-formed message for a task nobody registered is Celery's business
    unknown, _ = fresh(template, 99)
    unknown["headers"]["task"] = "nope.unknown"
    client.lpush("fast_tasks", json.dumps(unknown))
    # submitted the usual way (PENDING recorded), its message then damaged: FAILED
    broken_id, intact_id = f"b-{uuid.uuid4().hex[:6]}", f"i-{uuid.uuid4().hex[:6]}"
    execute_task.delay(**task_kwargs(broken_id))
    [key] = [k for k in queued(client) if k != b"fast_tasks"]  # its priority's list
    broken = json.loads(client.rpop(key))
    broken["headers"]["timelimit"] = "x"
    client.lpush("fast_tasks", json.dumps(broken))
    # a damaged copy under another Celery id does not end an execution whose own
    # message is fine
    intact = execute_task.delay(**task_kwargs(intact_id))
    copy_ = json.loads(client.lindex(key, 0))
    copy_["headers"].update(id=str(uuid.uuid4()), timelimit="x")
    client.lpush("fast_tasks", json.dumps(copy_))
    expected = len(sample) + 2

    first = start_worker(pool="prefork", concurrency=1)
    wait_until(lambda: client.llen(DEADLETTER) == expected and not queued(client)
               and client.hlen("unacked") == 0, timeout=30, message="all taken")
    assert "Received unregistered task of type 'nope.unknown'" in first.log()
    event, _ = wait_terminal(client, USER, broken_id, timeout=10)
    assert event["status"] == "failed" and event["error"]["type"] == "InvalidTaskError"
    assert "malformed broker message: header 'timelimit'" in event["error"]["message"]
    assert intact.get(timeout=30)["status"] == "completed"
    assert f"execution {intact_id}:1 was queued by another message" in first.log()
    assert wait_terminal(client, USER, intact_id)[0]["status"] == "completed"
    first.stop()  # a warm shutdown restores whatever is unacknowledged
    assert not queued(client) and client.hlen("unacked") == 0

    second = start_worker(pool="threads", concurrency=2)
    ok = execute_task.delay(**task_kwargs(f"ok-{uuid.uuid4().hex[:6]}")).get(timeout=30)
    assert ok["status"] == "completed"
    assert second.alive()
    assert client.llen(DEADLETTER) == expected
    assert "malformed" not in second.log() and "Traceback" not in second.log()


def test_basic_get_screens_too(aiecs_redis):
    """kombu's synchronous path (``RPOP``) dead-letters instead of raising."""
    from aiecs_worker.app import app
    from aiecs_worker.runner.poison import Transport

    client = aiecs_redis.client()
    client.lpush("fast_tasks", "not json{")
    with app.connection_for_read() as conn:
        assert isinstance(conn.transport, Transport)
        assert conn.default_channel.basic_get("fast_tasks") is None
    [entry] = [json.loads(e) for e in client.lrange(DEADLETTER, 0, -1)]
    assert entry["raw"] == "not json{" and entry["layer"] == "transport"
    assert "the envelope is not JSON" in entry["reason"]


def test_the_dead_letter_list_is_capped(aiecs_redis, monkeypatch):
    from aiecs_worker.runner import poison
    from aiecs_worker.settings import get_settings

    monkeypatch.setattr(get_settings(), "aiecs_deadletter_maxlen", 3)
    client = aiecs_redis.client()
    for i in range(5):
        poison.reject(f"junk {i}", "test", queue="q", layer="transport",
                      redis=lambda: _Client(client))
    assert [json.loads(e)["raw"] for e in client.lrange(DEADLETTER, 0, -1)] == [
        "junk 4", "junk 3", "junk 2"]
    huge = "x" * 100_000
    poison.reject(huge, "test", queue="q", layer="transport", redis=lambda: _Client(client))
    entry = json.loads(client.lindex(DEADLETTER, 0))
    assert entry["truncated"] and entry["size"] == 100_000 and len(entry["raw"]) == 65_536


class _Client:
    def __init__(self, client):
        self.client = client

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        return False


def test_a_malformed_broadcast_is_dead_lettered_and_remote_control_still_works(
        aiecs_redis, start_worker):
    """Fanout (``celery.pidbox``: revoke, ping, ...) goes through the same screen."""
    from aiecs_worker.app import app

    client = aiecs_redis.client()
    worker = start_worker(pool="threads", concurrency=2)
    receivers = client.publish("/0.celery.pidbox", json.dumps({"body": "", "properties": "x"}))
    assert receivers == 1, "the worker does not listen to /0.celery.pidbox"
    wait_until(lambda: client.llen(DEADLETTER) >= 1, timeout=10, message="dead-lettered")
    entry = json.loads(client.lindex(DEADLETTER, 0))
    assert "'properties' is a JSON string" in entry["reason"] and entry["layer"] == "transport"
    assert worker.alive()
    assert app.control.ping(destination=[f"{worker.name}@{entry['hostname'].split('@')[1]}"],
                            timeout=5)
    assert "Traceback" not in worker.log()


def test_celery_errors_past_the_checks_are_caught(aiecs_redis, template, monkeypatch):
    """The last line: whatever Celery's handler raises on a message that passed the checks
    dead-letters and acknowledges it (connection errors still propagate)."""
    from aiecs_worker.app import app
    from aiecs_worker.runner import poison
    from celery.worker.consumer import Consumer as CeleryConsumer

    def celery_handler(self, *args, **kwargs):
        def on_task_received(message):
            raise ValueError("deep inside Celery")
        return on_task_received

    monkeypatch.setattr(CeleryConsumer, "create_task_handler", celery_handler)
    consumer = object.__new__(poison.Consumer)  # no worker around it
    consumer.app, consumer.connection_errors = app, (ConnectionError,)
    handler = consumer.create_task_handler()
    client = aiecs_redis.client()
    env, _ = fresh(template, 0)
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        message = channel.Message(env, channel=channel)
        message.accept = {"application/json"}
        handler(message)
        assert message.acknowledged
    [entry] = [json.loads(e) for e in client.lrange(DEADLETTER, 0, -1)]
    assert entry["reason"] == "Celery could not take it: ValueError: deep inside Celery"
    assert json.loads(entry["raw"]) == env and entry["layer"] == "consumer"
