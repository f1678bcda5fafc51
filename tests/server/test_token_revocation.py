"""Token lifetime and revocation against a real server (issue 16, row 11): a token longer
lived than AIECS_TOKEN_MAX_LIFETIME, or without ``iat``, is refused; a revoked ``jti`` or
user is refused on HTTP and on socket connect; a connected socket of a revoked user is
disconnected."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import jwt
import pytest
import redis
import socketio
from aiecs_worker.server.revocation import revoke_user
from aiecs_worker.server.tokens import issue_token

from tests.server.helpers import Recorder, async_wait_until, uid


def run(coro):
    return asyncio.run(coro)


def jti_of(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["jti"]


def aiecs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiecs_worker.cli", *args],
                          env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=60)


async def refused_on_socket(server, token: str) -> dict:
    client = Recorder(server, token)
    client.sio.reconnection = False
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect()
    return client.connect_errors[-1]


def test_ten_year_token_and_token_without_iat_refused(progress_server):
    user = uid()
    ten_years = issue_token(user, progress_server.secret, ttl=10 * 365 * 86400)
    now = int(time.time())
    no_iat = jwt.encode({"sub": user, "aud": "aiecs", "exp": now + 60},
                        progress_server.secret, algorithm="HS256")
    for token, reason in ((ten_years, "lifetime"), (no_iat, "iat")):
        status, body = progress_server.http("GET", f"/tasks/{uid('t')}", token=token)
        assert status == 401, body
        assert body["error"]["type"] == "unauthorized" and reason in body["error"]["message"]
        err = run(refused_on_socket(progress_server, token))
        assert err["data"]["type"] == "unauthorized" and reason in err["message"]
    # a token within the lifetime passes (404: no such task, after authentication)
    status, _ = progress_server.http("GET", f"/tasks/{uid('t')}",
                                     token=progress_server.token(user))
    assert status == 404


def test_revoked_jti_refused_on_http_and_socket(progress_server):
    user = uid()
    revoked, kept = progress_server.token(user), progress_server.token(user)
    task = uid("t")
    assert progress_server.http("GET", f"/tasks/{task}", token=revoked)[0] == 404
    out = aiecs("token", "revoke", "--jti", jti_of(revoked),
                env={"REDIS_URL": progress_server.redis_url,
                     "AIECS_SECRET_KEY": progress_server.secret})
    assert out.returncode == 0, out.stderr
    status, body = progress_server.http("GET", f"/tasks/{task}", token=revoked)
    assert status == 401 and body["error"]["message"] == "token revoked"
    status, body = progress_server.http("POST", "/tasks", {"service": "x", "operation": "y"},
                                        token=revoked)
    assert status == 401, body
    err = run(refused_on_socket(progress_server, revoked))
    assert err == {"message": "token revoked",
                   "data": {"type": "unauthorized", "message": "token revoked"}}
    # the user's other token is not revoked
    assert progress_server.http("GET", f"/tasks/{task}", token=kept)[0] == 404
    # every revocation key expires
    client = redis.Redis.from_url(progress_server.redis_url)
    keys = list(client.scan_iter("aiecs:revoked:*"))
    assert keys and all(client.ttl(k) > 0 for k in keys)
    client.close()


def test_connected_socket_of_revoked_user_is_disconnected(progress_server):
    async def main():
        user, other = uid(), uid()
        victim = Recorder(progress_server, progress_server.token(user))
        victim.sio.reconnection = False
        bystander = Recorder(progress_server, progress_server.token(other))
        await victim.connect()
        await bystander.connect()
        client = redis.Redis.from_url(progress_server.redis_url)
        revoke_user(client, user, max_lifetime=86400)
        client.close()
        began = time.monotonic()
        await async_wait_until(lambda: not victim.sio.connected, timeout=10,
                               message="the revoked user's socket disconnected")
        took = time.monotonic() - began
        assert took < 4, took
        assert any("revoked" in e["message"] for e in victim.live("session_expired"))
        # the token cannot come back, on either side
        err = await refused_on_socket(progress_server, victim.token)
        assert "revoked" in err["message"]
        status, _ = progress_server.http("GET", f"/tasks/{uid('t')}", token=victim.token)
        assert status == 401
        # another user's connection is untouched
        assert bystander.sio.connected
        assert (await bystander.sio.call("ping", timeout=10))["time"] > 0
        await bystander.close()

    run(main())


def test_revoke_command_needs_one_target(progress_server):
    env = {"REDIS_URL": progress_server.redis_url, "AIECS_SECRET_KEY": progress_server.secret}
    assert aiecs("token", "revoke", env=env).returncode == 2
    assert aiecs("token", "revoke", "--jti", "a", "--user", "b", env=env).returncode == 2
    bad = aiecs("token", "revoke", "--user", "alice\n", env=env)
    assert bad.returncode == 2 and "does not match" in bad.stderr
    # issuing still works the old way, and refuses a ttl over the maximum lifetime
    out = aiecs("token", "alice", "--ttl", "120", env=env)
    assert out.returncode == 0, out.stderr
    assert aiecs("token", "alice", "--ttl", str(2 * 86400), env=env).returncode == 2
