"""What one ``POST /tasks`` costs Redis (issue 20, item 5), and the guarantees its cuts keep.

* No result subscription: the server never waits for the result of what it sends, so the
  send neither ``SUBSCRIBE``s to the result's channel nor ``UNSUBSCRIBE``s when the
  ``AsyncResult`` is dropped (before: one of each per submission); a ``.get()`` on a
  result sent that way still answers.
* The token's revocation is read in the route's first round trip, with the task's steps,
  and the step limit is checked against those steps: four round trips per submission
  (before: eight), counted by a private redis-server's ``INFO``.
* Nothing about revocation is cached: a token revoked through the CLI (or
  ``revoke_user``) is refused by every other server process at once, from its next
  request, before anything is recorded or counted, whatever else is wrong with the
  request (as when the gate checked ``POST /tasks``: that test passes on the code before
  the cut too; the first two fail there: 20 ``SUBSCRIBE`` for 20 submissions, eight round
  trips each, and no ``watch``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jwt

from tests.server.helpers import uid
from tests.server.test_api import _raw_exchange

#: the server's background Redis traffic (health probes, revocation polls) kept out of
#: the counted span
QUIET = {"AIECS_HEALTH_INTERVAL": "600", "AIECS_REVOCATION_POLL": "60"}


def echo_body(task_id: str | None = None) -> dict:
    body = {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "hello"}}
    return {**body, "task_id": task_id} if task_id else body


def counters(client) -> tuple[int, dict[str, int]]:
    reads = client.info("stats")["total_reads_processed"]
    calls = {k.removeprefix("cmdstat_"): v["calls"]
             for k, v in client.info("commandstats").items()}
    return reads, calls


def test_a_submission_subscribes_to_nothing_in_four_round_trips(redis_server, start_server):
    server = start_server(redis_server.url, env=QUIET)
    token = server.token(uid())
    client = redis_server.client()
    for _ in range(5):  # warm: connections made, scripts loaded
        assert server.http("POST", "/tasks", echo_body(uid("w")), token=token)[0] == 202
    n = 20
    reads0, calls0 = counters(client)
    for _ in range(n):
        status, out = server.http("POST", "/tasks", echo_body(uid("t")), token=token)
        assert status == 202, out
    reads1, calls1 = counters(client)
    calls = {k: v - calls0.get(k, 0) for k, v in calls1.items() if v != calls0.get(k, 0)}
    reads = reads1 - reads0 - 2  # the two INFO of counters() after the first one
    # no result subscription, and no SCARD/SISMEMBER of the step limit
    for command in ("subscribe", "unsubscribe", "scard", "sismember"):
        assert calls.get(command, 0) == 0, calls
    # revocation + steps (1), the quotas' admission (1), the PENDING record (1), the send
    # (1): at most four (eight before), with room for a few background reads of the
    # server's (its listener's health-check PING, a revocation poll) on a slow machine
    assert reads <= 4 * n + 5, (reads / n, calls)
    client.close()


def test_a_result_sent_unwatched_can_still_be_waited_for(aiecs_redis, worker):
    from aiecs_core import TaskRequest
    from aiecs_worker.producer import control
    from celery.result import AsyncResult

    request = TaskRequest(task_name="echo", user_id="alice", task_id=uid("t"), step=1,
                          mode="test", service="echo", input_data={"text": "one two"})
    sent = control.submit(request, watch=False)
    assert f"celery-task-meta-{sent.id}".encode() not in sent.backend.result_consumer \
        .subscribed_to
    out = sent.get(timeout=30)
    assert out["status"] == "completed" and out["result"]["text"] == "one two"
    again = AsyncResult(sent.id, app=sent.app)
    assert again.state == "SUCCESS" and again.result == out


def _cli(*args: str, redis_url: str, secret: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiecs_worker.cli", *args],
                          env=dict(os.environ, REDIS_URL=redis_url, AIECS_SECRET_KEY=secret),
                          capture_output=True, text=True, timeout=60)


def test_a_revocation_is_honoured_by_another_server_at_once(redis_server, start_server):
    from aiecs_worker.server.revocation import revoke_user

    one = start_server(redis_server.url, env=QUIET)
    other = start_server(redis_server.url, env=QUIET)
    client = redis_server.client()
    user = uid()
    token = one.token(user)
    for server in (one, other):
        assert server.http("POST", "/tasks", echo_body(), token=token)[0] == 202
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    out = _cli("token", "revoke", "--jti", jti, redis_url=redis_server.url,
               secret=one.secret)
    assert out.returncode == 0, out.stderr
    quota_keys = sorted(client.scan_iter(f"*{user}*"))
    before = {k: client.dump(k) for k in quota_keys}
    refused = uid("t")
    # the very next request, to the server that did not see the revocation happen;
    # a body that is also wrong (422, 400, 413 before) is still answered 401
    for body in (echo_body(refused), {"mode": "x"}, b"{not json"):
        raw = body if isinstance(body, bytes) else None
        status, err = other.http("POST", "/tasks", None if raw else body, token=token,
                                 raw=raw)
        assert status == 401, err
        assert err["error"] == {"type": "unauthorized", "message": "token revoked"}
        headers = {k.lower(): v for k, v in other.last_headers.items()}
        assert headers["www-authenticate"] == 'Bearer realm="aiecs", error="invalid_token"'
    head = (f"POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1200000\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    status, err = _raw_exchange(other, head)  # 413 from its length, were it not revoked
    assert status == 401 and err["error"]["message"] == "token revoked", err
    assert one.http("POST", "/tasks", echo_body(refused), token=token)[0] == 401
    # nothing recorded, nothing counted
    assert sorted(client.scan_iter(f"*{user}*")) == quota_keys
    assert {k: client.dump(k) for k in quota_keys} == before
    assert not client.exists(f"aiecs:t:{user}:{refused}:1:state")
    # the user's other tokens still submit
    assert other.http("POST", "/tasks", echo_body(), token=other.token(user))[0] == 202

    # a token minted by an API layer's own JWT library has no jti: revoked by its user
    user, now = uid(), int(time.time())
    token = jwt.encode({"sub": user, "aud": "aiecs", "iat": now - 5, "exp": now + 600},
                       one.secret, algorithm="HS256")
    assert one.http("POST", "/tasks", echo_body(), token=token)[0] == 202
    revoke_user(client, user, max_lifetime=86400)
    for server in (other, one):
        status, err = server.http("POST", "/tasks", echo_body(), token=token)
        assert status == 401 and "revoked" in err["error"]["message"], err
        assert server.http("GET", f"/tasks/{uid('t')}", token=token)[0] == 401
    client.close()
