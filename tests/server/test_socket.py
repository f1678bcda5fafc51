"""The Socket.IO side against a real server, with the python-socketio client.

Events come from ``RedisEventPublisher`` (what the worker's runner publishes with), so these
tests need no worker; tests/server/test_api.py runs a real worker.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import socketio
from aiecs_core import TaskEvent, TaskStatus
from aiecs_worker.server.tokens import issue_token
from aiecs_worker.store.events import RedisEventPublisher

from tests.server.helpers import Recorder, async_wait_until, uid
from tests.support.processes import ALLOWED_ORIGIN


def run(coro):
    return asyncio.run(coro)


def event(user: str, task: str, kind: str = "progress", status=TaskStatus.RUNNING, step=1,
          **fields) -> TaskEvent:
    return TaskEvent(type=kind, task_id=task, step=step, user_id=user, task_name="echo",
                     status=status, **fields)


async def publish_task(pub: RedisEventPublisher, user: str, task: str, n: int,
                       final: TaskStatus | None = TaskStatus.COMPLETED) -> list[int]:
    seqs = [await pub.publish(event(user, task, "status", message="started"))]
    for i in range(n):
        seqs.append(await pub.publish(event(user, task, "stream", delta=f"<{i}>")))
    if final is not None:
        seqs.append(await pub.publish(event(user, task, "status", status=final,
                                            result={"n": n})))
    return seqs


@pytest.fixture
def publisher():
    import os

    pubs = []

    def make(url: str | None = None) -> RedisEventPublisher:
        pub = RedisEventPublisher(url or os.environ["REDIS_URL"])
        pubs.append(pub)
        return pub

    yield make


# -- authentication ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "missing token"),
        ({}, "missing token"),
        ({"token": 42}, "malformed token"),
        ({"token": "garbage"}, "malformed token"),
        ({"token": issue_token("alice", "w" * 40)}, "invalid token signature"),
        ({"token": issue_token("alice", "test-secret-" + "x" * 40, ttl=5,
                               now=time.time() - 60)}, "token expired"),
    ],
    ids=["none", "empty", "not-a-string", "garbage", "bad-signature", "expired"],
)
def test_connection_without_valid_token_refused(progress_server, auth, reason):
    async def main():
        client = Recorder(progress_server, None)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(auth=auth)
        assert client.connect_errors, "no connect_error received"
        err = client.connect_errors[-1]
        assert err["message"] == reason
        assert err["data"] == {"type": "unauthorized", "message": reason}
        assert not client.sio.connected

    run(main())


def test_bearer_header_accepted(progress_server):
    async def main():
        user = uid()
        client = Recorder(progress_server, None)
        await client.connect(
            auth=None, headers={"Authorization": f"Bearer {progress_server.token(user)}"}
        )
        assert (await client.subscribe(uid("t")))["ok"] is True
        await client.close()

    run(main())


def test_foreign_origin_refused_allowed_origin_accepted(progress_server):
    async def main():
        token = progress_server.token(uid())
        evil = Recorder(progress_server, token)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await evil.connect(headers={"Origin": "http://evil.example"})
        assert not evil.sio.connected
        # the polling transport's handshake too (a plain HTTP request)
        status, body = progress_server.http(
            "GET", "/socket.io/?EIO=4&transport=polling", headers={"Origin": "http://evil.example"})
        assert status == 400 and "not an accepted origin" in body
        status, body = progress_server.http(
            "GET", "/socket.io/?EIO=4&transport=polling", headers={"Origin": ALLOWED_ORIGIN})
        assert status == 200 and '"sid"' in body
        for origin in (ALLOWED_ORIGIN, progress_server.origin):
            good = Recorder(progress_server, token)
            await good.connect(headers={"Origin": origin})
            assert good.sio.connected
            await good.close()

    run(main())


def test_expired_token_disconnects_a_live_connection(progress_server):
    async def main():
        user = uid()
        client = Recorder(progress_server, progress_server.token(user, ttl=2))
        client.sio.reconnection = False
        await client.connect()
        await async_wait_until(lambda: client.live("session_expired"), timeout=10,
                               message="session_expired")
        await async_wait_until(lambda: not client.sio.connected, timeout=10,
                               message="disconnect")
        # and the same token cannot come back
        again = Recorder(progress_server, client.token)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await again.connect()
        assert again.connect_errors[-1]["message"] == "token expired"

    run(main())


# -- rooms --------------------------------------------------------------------------------------
def test_users_are_isolated_and_tabs_share(progress_server, publisher):
    async def main():
        alice, bob = uid("alice"), uid("bob")
        pub = publisher()
        tabs = [Recorder(progress_server, progress_server.token(alice)) for _ in range(2)]
        bobs = Recorder(progress_server, progress_server.token(bob))
        for c in (*tabs, bobs):
            await c.connect()
        a_seqs = await publish_task(pub, alice, "shared-name", 3)
        b_seqs = await publish_task(pub, bob, "shared-name", 5, final=TaskStatus.FAILED)
        for tab in tabs:
            await async_wait_until(lambda tab=tab: len(tab.live()) == len(a_seqs),
                                   message="alice's events in every tab")
        await async_wait_until(lambda: len(bobs.live()) == len(b_seqs))
        await asyncio.sleep(0.3)  # anything misrouted would have arrived by now
        for tab in tabs:
            assert {e["user_id"] for e in tab.live()} == {alice}
            assert [e["seq"] for e in tab.live()] == a_seqs
        assert {e["user_id"] for e in bobs.live()} == {bob}
        assert [e["seq"] for e in bobs.live()] == b_seqs
        # bob asking for alice's task by name gets *his* task's log, never hers
        ack = await bobs.sio.call("subscribe", {"task_id": "shared-name", "after_seq": 0})
        assert ack["ok"] and ack["replayed"] == ack["last_seq"] == len(b_seqs)
        await async_wait_until(lambda: bobs.live("task_events"))
        replayed = [e for batch in bobs.live("task_events") for e in batch["events"]]
        assert {e["user_id"] for e in replayed} == {bob}
        # and a payload naming another user changes nothing (the session says who)
        ack = await bobs.sio.call("subscribe", {"task_id": "shared-name", "after_seq": 0,
                                                "user_id": alice})
        assert ack["ok"] is False and ack["error"]["type"] == "invalid_request"
        for c in (*tabs, bobs):
            await c.close()

    run(main())


# -- replay -----------------------------------------------------------------------------------
def test_subscribe_replays_after_seq_then_live(progress_server, publisher):
    async def main():
        user, task = uid(), uid("t")
        pub = publisher()
        await publish_task(pub, user, task, 6, final=None)  # seq 1..7
        client = Recorder(progress_server, progress_server.token(user))
        await client.connect()
        client.seqs[task] = client._Seq(applied=3)
        ack = await client.subscribe(task)
        assert ack == {"ok": True, "task_id": task, "after_seq": 3, "replayed": 4,
                       "first_seq": 4, "replayed_to": 7, "last_seq": 7, "gap": False,
                       "exists": True, "steps": {}}
        await pub.publish(event(user, task, "status", status=TaskStatus.COMPLETED))
        await async_wait_until(lambda: len(client.events(task)) == 5)
        assert [e["seq"] for e in client.events(task)] == [4, 5, 6, 7, 8]
        await client.close()

    run(main())


def test_late_subscriber_gets_whole_history_and_final_state(progress_server, publisher):
    async def main():
        user, task = uid(), uid("t")
        seqs = await publish_task(publisher(), user, task, 450)  # > 2 replay batches
        client = Recorder(progress_server, progress_server.token(user))
        await client.connect()
        ack = await client.subscribe(task)
        assert ack["replayed"] == len(seqs) and ack["last_seq"] == seqs[-1]
        events = client.events(task)
        assert [e["seq"] for e in events] == seqs
        assert "".join(e["delta"] or "" for e in events) == "".join(f"<{i}>" for i in range(450))
        assert events[-1]["status"] == "completed" and events[-1]["result"] == {"n": 450}
        assert len(client.live("task_events")) == 3  # batches of 200
        await client.close()

    run(main())


def test_unknown_task_reports_not_existing(progress_server):
    async def main():
        client = Recorder(progress_server, progress_server.token(uid()))
        await client.connect()
        ack = await client.subscribe(uid("nothing"))
        assert ack["ok"] and ack["exists"] is False and ack["replayed"] == 0
        await client.close()

    run(main())


def test_reconnect_mid_task_misses_nothing(progress_server, publisher):
    """The connection drops while events keep coming; the client reconnects, resubscribes
    with its last seq and ends with every event once, in order."""

    async def main():
        user, task = uid(), uid("t")
        pub = publisher()
        client = Recorder(progress_server, progress_server.token(user))
        await client.connect()
        await client.subscribe(task)
        total = 120
        dropped_at = None
        published_away = 0  # events published after the drop was seen, before the reconnect
        away = asyncio.Event()
        client.sio.on("disconnect", lambda *_: away.set())

        async def produce():
            nonlocal dropped_at, published_away
            for i in range(total):
                await pub.publish(event(user, task, "stream", delta=f"[{i}]"))
                if away.is_set() and client.connects < 2:
                    published_away += 1
                if i == 30:
                    dropped_at = len(client.events(task))
                    # cut the transport as a network drop would (not awaited: the close
                    # handshake can take longer than the client's reconnect, and the
                    # events must go on while it is away); the next event is published
                    # once the client has seen the drop, before its reconnect delay ends
                    drop = asyncio.ensure_future(client.sio.eio.ws.close())
                    await asyncio.wait_for(away.wait(), timeout=10)
                    continue
                await asyncio.sleep(0.005)
            await drop
            await pub.publish(event(user, task, "status", status=TaskStatus.COMPLETED))

        await produce()
        await async_wait_until(
            lambda: len(client.events(task)) == total + 1, timeout=20,
            message=lambda: f"all events after the reconnect: applied "
            f"{len(client.events(task))}, connects {client.connects}, "
            f"connected {client.sio.connected}")
        assert client.connects >= 2, "the client never reconnected"
        seqs = [e["seq"] for e in client.events(task)]
        assert seqs == list(range(1, total + 2))
        assert "".join(e["delta"] or "" for e in client.events(task)) == "".join(
            f"[{i}]" for i in range(total))
        # events really were published while it was away (else the test proves nothing);
        # how they reach it after the reconnect (the subscribe's replay, or the relay
        # catching up) is the server's to choose
        assert dropped_at is not None and published_away > 0, "nothing published while away"
        await client.close()

    run(main())


def test_trimmed_log_reports_gap_and_releases_held_events(start_server, redis_server,
                                                          publisher):
    async def main():
        server = start_server(redis_server.url)
        user, task = uid(), uid("t")
        pub = RedisEventPublisher(redis_server.url, maxlen=5)
        try:
            # a client that applied seq 1, then many events it missed, trimmed to the last few
            for i in range(300):
                await pub.publish(event(user, task, "stream", delta=str(i)))
        finally:
            await pub.aclose()
        client = Recorder(server, server.token(user))
        await client.connect()
        client.seqs[task] = client._Seq(applied=1)
        ack = await client.subscribe(task)
        assert ack["gap"] is True and ack["first_seq"] > 2 and ack["replayed_to"] == 300
        assert client.events(task)[-1]["seq"] == 300
        assert [e["seq"] for e in client.events(task)] == list(range(ack["first_seq"], 301))
        await client.close()

    run(main())


# -- malformed messages -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [None, "t1", 42, [], {"task_id": 5}, {"task_id": "a:b"}, {"task_id": "t", "after_seq": -1},
     {"task_id": "t", "after_seq": "3"}, {"task_id": "t", "after_seq": True},
     {"task_id": "t", "extra": 1}, {"after_seq": 2}],
    ids=["none", "string", "int", "list", "int-id", "colon-id", "negative", "str-seq",
         "bool-seq", "extra", "no-id"],
)
def test_malformed_subscribe_answered_with_error(progress_server, payload):
    async def main():
        client = Recorder(progress_server, progress_server.token(uid()))
        await client.connect()
        ack = await client.sio.call("subscribe", payload, timeout=10)
        assert ack["ok"] is False and ack["error"]["type"] == "invalid_request"
        await async_wait_until(lambda: client.live("request_error"))
        assert client.live("request_error")[0]["event"] == "subscribe"
        assert client.sio.connected
        # still usable
        assert (await client.subscribe(uid("t")))["ok"]
        await client.close()

    run(main())


def test_unknown_event_and_heartbeat(progress_server):
    async def main():
        client = Recorder(progress_server, progress_server.token(uid()))
        await client.connect()
        ack = await client.sio.call("drop_tables", {"x": 1}, timeout=10)
        assert ack["ok"] is False and ack["error"]["type"] == "unknown_event"
        await client.sio.emit("ping")
        await async_wait_until(lambda: client.live("pong"), message="pong")
        assert abs(client.live("pong")[0]["time"] - time.time()) < 60
        assert (await client.sio.call("ping", timeout=10))["time"] > 0
        assert client.sio.connected
        await client.close()

    run(main())


def test_oversized_message_closes_only_that_connection(progress_server):
    async def main():
        big = Recorder(progress_server, progress_server.token(uid()))
        big.sio.reconnection = False
        await big.connect()
        await big.sio.emit("subscribe", {"task_id": "t", "pad": "x" * 200_000})
        await async_wait_until(lambda: not big.sio.connected, timeout=10,
                               message="oversized message closes the connection")
        status, health = progress_server.health()
        assert status == 200, health
        other = Recorder(progress_server, progress_server.token(uid()))
        await other.connect()
        assert (await other.subscribe(uid("t")))["ok"]
        await other.close()

    run(main())


# -- Redis outages ----------------------------------------------------------------------------
def test_redis_restart_listener_recovers_and_healthz_tells(start_server, redis_server,
                                                           publisher):
    """Redis goes away: /healthz says so; it comes back: the listener is live again, the
    client is told to resync and gets everything that reached the log."""

    async def main():
        server = start_server(redis_server.url)
        user, task = uid(), uid("t")
        client = Recorder(server, server.token(user))
        await client.connect()
        await client.subscribe(task)
        pub = publisher(redis_server.url)
        await pub.publish(event(user, task, "status", message="started"))
        await async_wait_until(lambda: len(client.events(task)) == 1)

        await asyncio.to_thread(redis_server.stop)
        status, health = await async_wait_until(
            lambda: (lambda r: r if r[0] == 503 else None)(server.health()), timeout=20,
            message="healthz reporting the outage")
        assert health["redis"] is False and health["status"] == "degraded"
        assert await pub.publish(event(user, task, "stream", delta="lost")) is None

        await asyncio.to_thread(redis_server.start)
        await async_wait_until(lambda: server.health()[0] == 200, timeout=30,
                               message="healthz healthy again")
        # nothing was persisted: the log starts again (the new Redis is empty)
        for i in range(3):
            await pub.publish(event(user, task, "stream", delta=f"after{i}"))
        await async_wait_until(
            lambda: sum(1 for e in client.live() if (e.get("delta") or "").startswith("after"))
            == 3, timeout=20,
            message=lambda: f"live events after the restart; got {client.raw}, "
            f"health {server.health()}")
        await async_wait_until(lambda: client.live("resync"), timeout=20, message="resync")
        assert server.health()[1]["pubsub_listener"] is True
        await client.close()

    run(main())


def test_listener_connection_killed_events_still_arrive(start_server, redis_server, publisher):
    """The server's pub/sub connection is cut (CLIENT KILL) while events flow: the listener
    reconnects, /healthz recovers, and the client still ends with every event, once."""

    async def main():
        server = start_server(redis_server.url)
        user, task = uid(), uid("t")
        client = Recorder(server, server.token(user))
        await client.connect()
        await client.subscribe(task)
        pub = publisher(redis_server.url)
        admin = redis_server.client()
        total = 60
        for i in range(total):
            await pub.publish(event(user, task, "stream", delta=f"{i},"))
            if i == 20:
                killed = admin.client_kill_filter(_type="pubsub")
                assert killed >= 1
            await asyncio.sleep(0.01)
        await pub.publish(event(user, task, "status", status=TaskStatus.COMPLETED))
        await async_wait_until(lambda: len(client.events(task)) == total + 1, timeout=30,
                               message=lambda: f"all events; applied "
                               f"{len(client.events(task))}, health {server.health()}")
        assert [e["seq"] for e in client.events(task)] == list(range(1, total + 2))
        await async_wait_until(lambda: server.health()[0] == 200, timeout=20)
        admin.close()
        await pub.aclose()
        await client.close()

    run(main())
