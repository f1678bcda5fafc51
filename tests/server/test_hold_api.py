"""``POST /tasks`` with a far ``countdown`` / ``eta``: held in Redis, not in the broker
(issue 16, row 2); ``DELETE`` frees what it held."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.server.helpers import uid

DAY = 86_400


def _echo(**extra):
    return {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "x" * 50_000, "chunks": 1}, **extra}


def _broker_messages(client) -> int:
    return sum(client.llen(q + sep) for q in ("fast_tasks", "heavy_tasks")
               for sep in ("", "\x06\x163", "\x06\x166", "\x06\x169")) + client.hlen("unacked")


def test_far_future_http_submissions_are_held_in_redis_and_cancel_frees_them(
        progress_server, aiecs_redis):
    server, user = progress_server, uid()
    token = server.token(user)
    client = aiecs_redis.client()
    eta = (datetime.now(UTC) + timedelta(days=29)).isoformat()
    held = []
    for extra in ({"countdown": 30 * DAY - 60}, {"eta": eta}):
        status, out = server.http("POST", "/tasks", _echo(**extra), token=token)
        assert status == 202, out
        held.append(out["task_id"])
    assert _broker_messages(client) == 0  # today: two messages with 50 KB each
    for task_id in held:
        key = f"aiecs:t:{user}:{task_id}:1:state"
        assert client.zscore("aiecs:held:due", key) is not None
        assert client.ttl(key) > 28 * DAY
    status, _ = server.http("DELETE", f"/tasks/{held[0]}", token=token)
    assert status == 202
    status, view = server.http("GET", f"/tasks/{held[0]}", token=token)
    assert view["status"] == "cancelled"
    key = f"aiecs:t:{user}:{held[0]}:1:state"
    assert client.zscore("aiecs:held:due", key) is None
    assert not client.hexists(key, "request")
    assert client.zcard("aiecs:held:due") == 1
