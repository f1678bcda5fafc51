"""The task API over HTTP, against a real server and a real Celery worker."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.server.helpers import Recorder, uid, wait_until
from tests.support.processes import ALLOWED_ORIGIN, ServerProcess

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


def echo_body(**inp):
    inp.setdefault("text", "one two three four five six")
    return {"mode": "test", "service": "echo", "task_name": inp.pop("op", "echo"),
            "input_data": inp}


def final_state(server: ServerProcess, token: str, task_id: str, timeout: float = 30.0):
    def done():
        status, body = server.http("GET", f"/tasks/{task_id}", token=token)
        return body if status == 200 and body["status"] in TERMINAL else None

    return wait_until(done, timeout=timeout, message=f"task {task_id} to finish")


# -- happy path ---------------------------------------------------------------------------------
def test_submit_runs_and_streams_to_the_owner_only(progress_server, aiecs_redis, worker):
    alice, bob = uid("alice"), uid("bob")
    server = progress_server

    async def main():
        watcher = Recorder(server, server.token(alice))
        other = Recorder(server, server.token(bob))
        await watcher.connect()
        await other.connect()
        status, out = await asyncio.to_thread(
            server.http, "POST", "/tasks", echo_body(chunks=4, delay=0.05),
            token=server.token(alice))
        assert status == 202, out
        assert out["step"] == 1 and out["queue"] == "fast_tasks" and out["status"] == "pending"
        task_id = out["task_id"]
        await watcher.subscribe(task_id)

        def finished():
            evs = watcher.events(task_id)
            return evs and evs[-1]["type"] == "status" and evs[-1]["status"] in TERMINAL

        from tests.server.helpers import async_wait_until

        await async_wait_until(finished, timeout=30, message="terminal event")
        events = watcher.events(task_id)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["status"] for e in events if e["type"] == "status"] == [
            "pending", "running", "completed"]
        assert "".join(e["delta"] or "" for e in events) == "one two three four five six"
        assert events[-1]["result"] == {"text": "one two three four five six", "chunks": 4}
        assert other.live() == [] and other.live("task_events") == []
        await watcher.close()
        await other.close()
        return task_id

    task_id = asyncio.run(main())
    status, view = server.http("GET", f"/tasks/{task_id}", token=server.token(alice))
    assert status == 200
    assert view["status"] == "completed" and view["step"] == 1
    assert view["result"] == {"text": "one two three four five six", "chunks": 4}
    assert view["steps"][0]["attempts"] == 1 and view["usage"][0]["provider"] == "echo"
    assert view["events"][-1]["status"] == "completed" and view["last_seq"] == len(
        view["events"])
    # another user cannot see or cancel it: to bob it does not exist
    assert server.http("GET", f"/tasks/{task_id}", token=server.token(bob))[0] == 404
    assert server.http("DELETE", f"/tasks/{task_id}", token=server.token(bob))[0] == 404


def test_cancel_a_running_task(progress_server, aiecs_redis, worker):
    server, user = progress_server, uid()
    token = server.token(user)
    status, out = server.http("POST", "/tasks", echo_body(chunks=50, delay=0.2), token=token)
    assert status == 202
    task_id = out["task_id"]
    wait_until(lambda: server.http("GET", f"/tasks/{task_id}", token=token)[1]["status"]
               == "running", message="running")
    status, body = server.http("DELETE", f"/tasks/{task_id}", token=token)
    assert (status, body) == (202, {"task_id": task_id, "cancelling": [1]})
    view = final_state(server, token, task_id)
    assert view["status"] == "cancelled"
    assert view["events"][-1]["status"] == "cancelled"
    status, body = server.http("DELETE", f"/tasks/{task_id}", token=token)
    assert status == 409 and body["error"]["type"] == "already_finished"


def test_queue_follows_declaration_unless_overridden(progress_server, aiecs_redis,
                                                     start_worker):
    server, token = progress_server, progress_server.token(uid())
    heavy_only = start_worker(queues="heavy_tasks")
    cases = [("echo_heavy", None, "heavy_tasks"), ("echo", True, "heavy_tasks")]
    ids = []
    for op, heavy, queue in cases:
        body = echo_body(op=op)
        if heavy is not None:
            body["heavy"] = heavy
        status, out = server.http("POST", "/tasks", body, token=token)
        assert status == 202 and out["queue"] == queue, out
        ids.append(out["task_id"])
    for task_id in ids:  # only a heavy_tasks worker runs: they really went there
        assert final_state(server, token, task_id)["status"] == "completed"
    status, out = server.http("POST", "/tasks", {**echo_body(op="echo_heavy"), "heavy": False},
                              token=token)
    assert status == 202 and out["queue"] == "fast_tasks"
    assert heavy_only.alive()


def test_steps_numbered_and_duplicates_refused(progress_server, aiecs_redis, worker):
    server, token = progress_server, progress_server.token(uid())
    task_id = uid("task")
    body = {**echo_body(), "task_id": task_id}
    assert server.http("POST", "/tasks", body, token=token)[1]["step"] == 1
    final_state(server, token, task_id)
    assert server.http("POST", "/tasks", body, token=token)[1]["step"] == 2
    status, err = server.http("POST", "/tasks", {**body, "step": 2}, token=token)
    assert status == 409 and "already submitted" in err["error"]["message"]
    view = wait_until(
        lambda: (lambda v: v if v["step"] == 2 and v["status"] == "completed" else None)(
            server.http("GET", f"/tasks/{task_id}", token=token)[1]),
        timeout=30, message="step 2 completed")
    assert [s["step"] for s in view["steps"]] == [1, 2]
    status, one = server.http("GET", f"/tasks/{task_id}?step=1&events=0", token=token)
    assert status == 200 and one["step"] == 1 and one["events"] == []


# -- errors ---------------------------------------------------------------------------------------
def _expired(server):
    import time

    from aiecs_worker.server.tokens import issue_token

    return issue_token("alice", server.secret, ttl=5, now=time.time() - 60)


@pytest.mark.parametrize(
    ("method", "path", "body", "token", "headers", "status", "type_", "words"),
    [
        ("POST", "/tasks", echo_body(), None, {}, 401, "unauthorized", "missing token"),
        ("POST", "/tasks", echo_body(), "garbage", {}, 401, "unauthorized", "malformed"),
        ("POST", "/tasks", echo_body(), "expired", {}, 401, "unauthorized", "expired"),
        ("POST", "/tasks", echo_body(), "foreign", {}, 401, "unauthorized", "signature"),
        ("GET", "/tasks/x", None, None, {}, 401, "unauthorized", "missing token"),
        ("DELETE", "/tasks/x", None, None, {}, 401, "unauthorized", "missing token"),
        ("POST", "/tasks", {**echo_body(), "user_id": "bob"}, "ok", {}, 422,
         "invalid_request", "taken from the token"),
        ("POST", "/tasks", b"{not json", "ok", {}, 400, "bad_request", "not valid JSON"),
        ("POST", "/tasks", b"", "ok", {}, 400, "bad_request", "empty body"),
        ("POST", "/tasks", [1, 2], "ok", {}, 422, "invalid_request", "valid dictionary"),
        ("POST", "/tasks", {"mode": "test"}, "ok", {}, 422, "invalid_request", "service"),
        ("POST", "/tasks", {**echo_body(), "service": "nope"}, "ok", {}, 422,
         "ServiceNotFoundError", "available: "),
        ("POST", "/tasks", {**echo_body(), "task_name": "nope"}, "ok", {}, 422,
         "OperationNotFoundError", "available: echo"),
        ("POST", "/tasks", {**echo_body(), "input_data": {"txt": 1}}, "ok", {}, 422,
         "InputValidationError", "text"),
        ("POST", "/tasks", {**echo_body(), "task_id": "a/b"}, "ok", {}, 422,
         "invalid_request", "task_id"),
        ("POST", "/tasks", {**echo_body(), "step": -1}, "ok", {}, 422,
         "invalid_request", "step"),
        ("POST", "/tasks", echo_body(), "ok", {"Origin": "http://evil.example"}, 403,
         "forbidden_origin", "not allowed"),
        ("GET", "/tasks/a:b", None, "ok", {}, 400, "bad_request", "invalid task_id"),
        ("GET", "/tasks/unknown", None, "ok", {}, 404, "not_found", "no task"),
        ("GET", "/tasks/x?events=many", None, "ok", {}, 400, "bad_request", "integer"),
        ("DELETE", "/tasks/unknown", None, "ok", {}, 404, "not_found", "no task"),
        ("GET", "/nope", None, None, {}, 404, "not_found", "no route"),
        ("PUT", "/tasks", None, None, {}, 405, "method_not_allowed", ""),
        ("POST", "/dev/token", {"user_id": "x"}, None, {}, 404, "not_found", "no route"),
    ],
)
def test_errors_are_json_with_the_right_status(progress_server, method, path, body, token,
                                               headers, status, type_, words):
    server = progress_server
    tokens = {None: None, "garbage": "garbage", "ok": server.token(uid()),
              "expired": _expired(server),
              "foreign": ServerProcess(redis_url="", secret="f" * 40).token("alice")}
    raw = body if isinstance(body, bytes) else None
    got_status, got = server.http(method, path, None if raw is not None else body,
                                  token=tokens[token], headers=headers, raw=raw)
    assert got_status == status, got
    assert set(got) == {"error"} and got["error"]["type"] == type_
    assert words in got["error"]["message"]
    assert "Traceback" not in json.dumps(got)
    if status == 401:
        assert server.last_headers.get("www-authenticate", "").startswith("Bearer")


def _raw_exchange(server: ServerProcess, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send one request on a raw socket and parse the JSON response.

    A client that announces a large body with ``Expect: 100-continue`` (as curl does) waits for
    the server's verdict before sending it; a server that refuses from the headers alone never
    has to read, nor the client to write, the body.
    """
    import socket

    host, port = server.url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a response: {data!r}"
            data += chunk
        header_blob, rest = data.split(b"\r\n\r\n", 1)
        lines = header_blob.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, json.loads(rest[:length])


def test_oversize_body_is_refused_from_its_content_length(progress_server):
    server = progress_server
    head = (f"POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token(uid())}"
            "\r\nContent-Type: application/json\r\nContent-Length: 1200000\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    status, body = _raw_exchange(server, head)  # the body itself is never sent
    assert status == 413, body
    assert body["error"]["type"] == "payload_too_large"
    assert "larger than" in body["error"]["message"]


def test_oversize_chunked_body_is_refused_while_streaming(progress_server):
    server = progress_server
    from aiecs_worker.server.params import ENVELOPE_BYTES
    from aiecs_worker.settings import Settings

    # one byte over the limit: the server has read the whole body when it refuses, so the
    # exchange is deterministic (no write racing the server's close)
    limit = Settings.model_fields["aiecs_max_payload_bytes"].default + ENVELOPE_BYTES
    base = len(json.dumps(echo_body(text="")).encode())
    payload = json.dumps(echo_body(text="x" * (limit + 1 - base))).encode()
    assert len(payload) == limit + 1
    head = (f"POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token(uid())}"
            "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
    body = b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n"
    status, out = _raw_exchange(server, head, body)
    assert status == 413, out
    assert out["error"]["type"] == "payload_too_large"


def test_cors_preflight_and_headers(progress_server):
    server = progress_server
    pre = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    status, _ = server.http("OPTIONS", "/tasks", headers=pre)
    assert status == 200
    assert server.last_headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    status, body = server.http("OPTIONS", "/tasks", headers={**pre, "Origin": "http://evil.example"})
    assert status == 403 and body["error"]["type"] == "forbidden_origin"
    status, _ = server.http("GET", "/services", headers={"Origin": ALLOWED_ORIGIN})
    assert status == 200 and server.last_headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    # the page's own origin is allowed without configuration
    assert server.http("GET", "/config", headers={"Origin": server.origin})[0] == 200


class _DefaultOriginsServer(ServerProcess):
    """A server whose environment does not set CORS_ALLOWED_ORIGINS at all."""

    def environ(self):
        env = super().environ()
        env.pop("CORS_ALLOWED_ORIGINS")
        return env


@pytest.mark.parametrize("dev", [False, True], ids=["production", "dev"])
def test_cors_default_is_the_page_only_and_dev_adds_localhost(aiecs_redis, dev):
    """README: CORS_ALLOWED_ORIGINS defaults to none (the page's own origin only); dev mode
    also allows the front-end dev servers http://localhost:3000 and :3001."""
    server = _DefaultOriginsServer(redis_url=aiecs_redis.url,
                                   env={"AIECS_DEV": "1"} if dev else {}).start()
    try:
        for origin in ("http://localhost:3000", "http://localhost:3001"):
            pre = {"Origin": origin, "Access-Control-Request-Method": "POST"}
            status, _ = server.http("OPTIONS", "/tasks", headers=pre)
            assert status == (200 if dev else 403), (origin, status)
        status, _ = server.http("OPTIONS", "/tasks", headers={
            "Origin": server.origin, "Access-Control-Request-Method": "POST"})
        assert status == 200
    finally:
        server.stop()
        server.close()


def test_services_health_config_page(progress_server):
    server = progress_server
    status, listing = server.http("GET", "/services")
    assert status == 200
    keys = {(s["mode"], s["service"]) for s in listing["services"]}
    assert {("test", "echo"), ("test", "buggy")} <= keys
    echo = next(s for s in listing["services"] if s["service"] == "echo")
    assert echo["operations"]["echo_heavy"]["heavy"] is True
    assert "properties" in echo["operations"]["echo"]["input_schema"]
    assert echo["operations"]["echo"]["example"]["text"]  # the page's form starts from it
    status, health = server.http("GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["pubsub_listener"] is True
    status, config = server.http("GET", "/config")
    assert status == 200 and (config["dev"], config["token_ttl"]) == (False, 3600)
    assert isinstance(config["history"], bool)  # whether the page may ask /executions

    status, page = server.http("GET", "/")
    assert status == 200 and "/static/socket.io.min.js" in page
    assert "default-src 'self'" in server.last_headers["content-security-policy"]
    status, js = server.http("GET", "/static/socket.io.min.js")
    assert status == 200 and js.startswith("/*!\n * Socket.IO v4")


def test_dev_mode_hands_out_tokens(start_server, redis_server):
    server = start_server(redis_server.url, env={"AIECS_DEV": "1"},
                          secret="")  # no AIECS_SECRET_KEY: dev mode makes one
    assert server.http("GET", "/config")[1]["dev"] is True
    status, out = server.http("POST", "/dev/token", {"user_id": "carol"})
    assert status == 200 and out["user_id"] == "carol"

    async def main():
        client = Recorder(server, out["token"])
        await client.connect()
        assert (await client.subscribe("t1"))["ok"]
        await client.close()

    asyncio.run(main())
    status, err = server.http("POST", "/dev/token", {"user_id": "a:b"})
    assert status == 422 and err["error"]["type"] == "invalid_request"


def test_no_secret_outside_dev_mode_refuses_to_start(redis_server):
    server = ServerProcess(redis_url=redis_server.url, secret="")
    try:
        with pytest.raises(RuntimeError, match="AIECS_SECRET_KEY is not set"):
            server.start(timeout=30)
    finally:
        server.close()


def test_backend_down_is_503(start_server, redis_server):
    server = start_server(redis_server.url)
    token = server.token(uid())
    redis_server.stop()
    t0 = time.monotonic()
    status, err = server.http("POST", "/tasks", echo_body(), token=token)
    assert status == 503 and err["error"]["type"] == "unavailable"
    # within the result subscription's bound (5 s), not Celery's default 19 s of retries
    assert time.monotonic() - t0 < 10
    assert server.http("GET", "/tasks/abc", token=token)[0] == 503
    wait_until(lambda: server.health()[0] == 503, timeout=20, message="healthz 503")
    # Redis is back: the same server accepts tasks again, without a restart
    redis_server.start()
    wait_until(lambda: server.http("POST", "/tasks", echo_body(), token=token)[0] == 202,
               timeout=30, message="submissions accepted again")
    wait_until(lambda: server.health()[0] == 200, timeout=30, message="healthz 200")
