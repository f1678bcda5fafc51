"""The official JavaScript client (socket.io-client from npm) against the real server, with a
real worker producing the events."""

from __future__ import annotations

import time

import pytest
from aiecs_worker.server.tokens import issue_token

from tests.e2e.nodeproc import run_node
from tests.server.helpers import uid
from tests.support.events import read_events, wait_terminal
from tests.support.processes import ALLOWED_ORIGIN


def submit(server, user: str, **inp) -> str:
    status, out = server.http("POST", "/tasks", {
        "mode": "test", "service": "echo", "task_name": "echo", "input_data": inp},
        token=server.token(user))
    assert status == 202, out
    return out["task_id"]


def test_js_client_survives_a_drop_mid_task(node, page_server, aiecs_redis, worker):
    user = uid("alice")
    text = "The JavaScript client reconnects and catches up from the log. " * 2
    task_id = submit(page_server, user, text=text, chunks=40, delay=0.08)
    code, lines, err = run_node(node, "js_client.mjs", {
        "url": page_server.url, "token": page_server.token(user), "task_id": task_id,
        "drop_after": 6, "timeout_ms": 90000})
    assert code == 0, (lines[-10:], err)
    kinds = [line["kind"] for line in lines]
    assert "drop" in kinds and kinds.count("connect") >= 2, kinds
    applied = [line for line in lines if line["kind"] == "applied"]
    r = aiecs_redis.client()
    _, log = wait_terminal(r, user, task_id)
    assert [a["seq"] for a in applied] == [e["seq"] for e in log] == list(
        range(1, len(log) + 1))
    assert "".join(a["delta"] or "" for a in applied) == text
    assert lines[-1] == {"kind": "final", "status": "completed", "seq": len(log)}
    # some events really did arrive while it was away (replayed, not live)
    live = {line["seq"] for line in lines if line["kind"] == "live"}
    assert set(range(1, len(log) + 1)) - live
    r.close()


def test_js_client_sees_only_its_users_events(node, page_server, aiecs_redis, worker):
    alice, bob = uid("alice"), uid("bob")
    task_id = submit(page_server, alice, text="alice only", chunks=10, delay=0.1)
    code, lines, err = run_node(node, "js_client.mjs", {
        "url": page_server.url, "token": page_server.token(bob), "task_id": task_id,
        "timeout_ms": 3000})
    assert code == 2, (lines, err)  # nothing to see: it waits until its timeout
    assert [line for line in lines if line["kind"] in ("live", "applied")] == []
    ack = next(line["ack"] for line in lines if line["kind"] == "ack")
    assert ack["ok"] is True and ack["exists"] is False
    wait_terminal(aiecs_redis.client(), alice, task_id)
    assert read_events(aiecs_redis.client(), bob, task_id) == []


@pytest.mark.parametrize(
    ("token", "message"),
    [(None, "missing token"), ("bad-signature", "invalid token signature"),
     ("expired", "token expired"), ("garbage", "malformed token")],
)
def test_js_client_refused_without_a_valid_token(node, page_server, token, message):
    tokens = {None: None, "garbage": "garbage",
              "bad-signature": issue_token("alice", "z" * 40),
              "expired": issue_token("alice", page_server.secret, 5, now=time.time() - 60)}
    code, lines, err = run_node(node, "js_client.mjs", {
        "url": page_server.url, "token": tokens[token], "task_id": "t", "timeout_ms": 15000})
    assert code == 0, (lines, err)
    assert lines == [{"kind": "connect_error", "message": message,
                      "data": {"type": "unauthorized", "message": message}}]


def test_js_client_origin_checked(node, page_server):
    token = page_server.token(uid())
    code, lines, _ = run_node(node, "js_client.mjs", {
        "url": page_server.url, "token": token, "task_id": "t", "origin": "http://evil.example",
        "timeout_ms": 4000})
    assert not any(line["kind"] == "connect" for line in lines), lines
    assert any(line["kind"] == "connect_error" for line in lines), lines
    code, lines, err = run_node(node, "js_client.mjs", {
        "url": page_server.url, "token": token, "task_id": "t", "origin": ALLOWED_ORIGIN,
        "wait_connect_only": True})
    assert code == 0 and lines[0]["kind"] == "connect", (lines, err)


def test_vendored_client_is_the_npm_package(node):
    """The page's socket.io.min.js is the npm package's dist file, byte for byte (update
    both together: npm update in tests/e2e, then copy dist/socket.io.min.js)."""
    from pathlib import Path

    import aiecs_worker.server

    vendored = Path(aiecs_worker.server.__file__).parent / "static" / "socket.io.min.js"
    npm = Path(__file__).parent / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
    assert vendored.read_bytes() == npm.read_bytes()
