"""Identifiers are matched whole (``re.fullmatch``), never as a prefix: ``"alice\\n"`` and
``/tasks/abc%0A`` are refused (issue 16, row 9), on every route and on the socket."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
import redis
import socketio
from aiecs_worker.server.revocation import revoke_user
from aiecs_worker.server.tokens import issue_token

from tests.server.helpers import Recorder, uid

NEWLINES = ["%0A", "%0D%0A", "%0A%0A"]


@pytest.mark.parametrize("suffix", NEWLINES)
@pytest.mark.parametrize(("method", "route"), [
    ("GET", "/tasks"), ("DELETE", "/tasks"), ("GET", "/schedules"), ("DELETE", "/schedules"),
    ("GET", "/batches"), ("DELETE", "/batches"), ("GET", "/workflows"),
    ("DELETE", "/workflows"),
])
def test_ids_in_paths_with_a_trailing_newline_are_refused(progress_server, method, route,
                                                           suffix):
    token = progress_server.token(uid())
    status, body = progress_server.http(method, f"{route}/abc{suffix}", token=token)
    assert status == 400, body
    assert body["error"]["type"] == "bad_request" and "invalid task_id" in body["error"][
        "message"]


@pytest.mark.parametrize(("path", "body"), [
    ("/tasks", {"mode": "test", "service": "echo", "task_name": "echo", "task_id": "t\n",
                "input_data": {"text": "x"}}),
    ("/schedules", {"mode": "test", "service": "echo", "task_name": "echo", "task_id": "s\n",
                    "input_data": {"text": "x"}, "every": 3600}),
    ("/batches", {"batch_id": "b\n", "items": [
        {"mode": "test", "service": "echo", "task_name": "echo", "input_data": {"text": "x"}}]}),
    ("/workflows", {"task_id": "w\n", "steps": [
        {"mode": "test", "service": "echo", "task_name": "echo", "input_data": {"text": "x"}}]}),
], ids=["task", "schedule", "batch", "workflow"])
def test_ids_in_bodies_with_a_trailing_newline_are_refused(progress_server, path, body):
    status, out = progress_server.http("POST", path, body, token=progress_server.token(uid()))
    assert status == 422, out
    assert "_id" in out["error"]["message"]


def test_token_subject_with_a_trailing_newline_is_refused(progress_server):
    now = int(time.time())
    forged = jwt.encode({"sub": "alice\n", "aud": "aiecs", "iat": now, "exp": now + 60},
                        progress_server.secret, algorithm="HS256")
    status, body = progress_server.http("GET", "/tasks/abc", token=forged)
    assert status == 401 and body["error"]["message"] == "invalid token: bad subject"

    async def main():
        client = Recorder(progress_server, forged)
        client.sio.reconnection = False
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect()
        assert client.connect_errors[-1]["message"] == "invalid token: bad subject"

        good = Recorder(progress_server, progress_server.token(uid()))
        await good.connect()
        ack = await good.sio.call("subscribe", {"task_id": "t\n", "after_seq": 0}, timeout=10)
        assert ack["ok"] is False and ack["error"]["type"] == "invalid_request"
        await good.close()

    asyncio.run(main())
    with pytest.raises(ValueError):
        issue_token("alice\n", progress_server.secret)
    client = redis.Redis.from_url(progress_server.redis_url)
    with pytest.raises(ValueError):
        revoke_user(client, "alice\n", max_lifetime=60)
    client.close()
