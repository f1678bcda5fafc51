"""Read a task's durable event log (the Redis stream) in tests."""

from __future__ import annotations

import json
import time
from typing import Any

from aiecs_worker.store.events import TaskKeys

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


def read_events(client, user_id: str, task_id: str) -> list[dict[str, Any]]:
    return [json.loads(f[b"e"]) for _, f in client.xrange(TaskKeys(user_id, task_id).log)]


def wait_for_event(client, user_id: str, task_id: str, predicate, timeout: float = 30.0):
    """Poll the log until an event matches ``predicate``; return (event, all events)."""
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(client, user_id, task_id)
        for event in events:
            if predicate(event):
                return event, events
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no matching event for {user_id}/{task_id} within {timeout}s; got "
                + json.dumps([(e["seq"], e["type"], e["status"], e.get("message")) for e in events])
            )
        time.sleep(0.02)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.02, message: str = ""):
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def wait_terminal(client, user_id: str, task_id: str, step: int = 1, timeout: float = 30.0):
    """Wait for the terminal event of one step; return (terminal event, all events)."""
    return wait_for_event(
        client, user_id, task_id,
        lambda e: e["step"] == step and e["type"] == "status" and e["status"] in TERMINAL,
        timeout,
    )


def step_events(events: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    return [e for e in events if e["step"] == step]


def dump_redis(client) -> str:
    """Every key and value in a Redis database as text, to search for what must not be there."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)
