"""Replay limits: one user's many replays cannot starve other users, excess subscribes are
refused with a clear error, and allowed replays stay complete and in order.

No timing assertions: slots are held deterministically by *stalled readers* (raw
long-polling connections that subscribe and then never poll, so their replay waits on
backpressure after a few chunks, provably in progress), and fairness is shown by order
of arrival, not by milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.request

import pytest
import socketio

from tests.server.helpers import Recorder, async_wait_until, uid, wait_until
from tests.server.test_socket import event, publish_task

LOG_EVENTS = 1000
LIMITS = {"AIECS_REPLAY_CONCURRENCY": "1", "AIECS_REPLAY_USER_CONCURRENCY": "2",
          "AIECS_REPLAY_BACKLOG": "2", "AIECS_REPLAY_USER_BACKLOG": "3",
          "AIECS_REPLAY_CHUNK": "50"}


class StalledPoller:
    """A Socket.IO client over Engine.IO long-polling, by hand: it polls only when told,
    so whatever the server sends it stays in the server's send queue."""

    def __init__(self, server, token: str):
        self.server = server
        status, text = server.http("GET", "/socket.io/?EIO=4&transport=polling")
        assert status == 200, text
        self.sid = json.loads(text[1:])["sid"]
        self.post("40" + json.dumps({"token": token}))
        assert self.poll()[0].startswith('40{"sid"')

    @property
    def path(self) -> str:
        return f"/socket.io/?EIO=4&transport=polling&sid={self.sid}"

    def post(self, *packets: str) -> None:
        req = urllib.request.Request(self.server.url + self.path, method="POST",
                                     data="\x1e".join(packets).encode(),
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def poll(self) -> list[str]:
        with urllib.request.urlopen(self.server.url + self.path, timeout=30) as resp:
            return resp.read().decode().split("\x1e")

    def subscribe(self, task_id: str, ack_id: int) -> None:
        self.post(f"42{ack_id}" + json.dumps(["subscribe", {"task_id": task_id,
                                                              "after_seq": 0}]))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.post("1")


@pytest.fixture(scope="module")
def limited_server():
    from tests.support.processes import ServerProcess

    server = ServerProcess(redis_url=os.environ["REDIS_URL"], env=LIMITS).start()
    yield server
    server.stop()
    print("\n".join(server.log().splitlines()[-60:]))
    server.close()


async def long_log(user: str, task: str, n: int = LOG_EVENTS) -> list[int]:
    from aiecs_worker.store.events import RedisEventPublisher

    pub = RedisEventPublisher(os.environ["REDIS_URL"])
    try:
        return await publish_task(pub, user, task, n)
    finally:
        await pub.aclose()


def test_excess_subscribes_refused_while_other_users_stream(limited_server):
    server = limited_server
    alice, bob = uid("alice"), uid("bob")

    async def main():
        a_seqs = await long_log(alice, "long")
        b_seqs = await long_log(bob, "long")
        # alice fills her user backlog (3) with replays that provably stay in progress
        stalled = [StalledPoller(server, server.token(alice)) for _ in range(3)]
        for i, poller in enumerate(stalled):
            poller.subscribe("long", ack_id=i)
        probe = Recorder(server, server.token(alice))
        await probe.connect()
        ack = await probe.sio.call("subscribe", {"task_id": "long", "after_seq": 0},
                                   timeout=10)
        assert ack["ok"] is False, ack
        assert ack["error"]["type"] == "too_many_replays"
        assert "this user's connections (limit 3)" in ack["error"]["message"]
        assert ack["error"]["retry_after"] > 0
        assert probe.sio.connected  # refused, not disconnected

        # bob is not affected: his replay is whole, in order, once; his live events flow
        bob_client = Recorder(server, server.token(bob))
        await bob_client.connect()
        ack = await bob_client.subscribe("long")
        assert ack["ok"] and ack["replayed"] == len(b_seqs) == ack["last_seq"]
        assert [e["seq"] for e in bob_client.events("long")] == b_seqs
        from aiecs_worker.store.events import RedisEventPublisher

        pub = RedisEventPublisher(os.environ["REDIS_URL"])
        live = await pub.publish(event(bob, "live", "stream", delta="now"))
        await async_wait_until(lambda: any(e["task_id"] == "live" for e in bob_client.live()),
                               message="bob's live event")
        await pub.aclose()
        assert live == 1

        # the stalled replays were still in progress all along: a poll shows a partial
        # replay (a few chunks) and no acknowledgement yet
        first = [p for p in stalled[0].poll() if p]
        batches = [json.loads(p[2:]) for p in first if p.startswith("42")]
        assert batches and all(b[0] == "task_events" for b in batches)
        assert not any(p.startswith("43") for p in first)
        assert sum(len(b[1]["events"]) for b in batches) < len(a_seqs)

        # alice's stalled connections go away: her slots free up, and a subscribe now
        # replays the whole log, in order, exactly once
        for poller in stalled:
            poller.close()

        async def allowed():
            client = Recorder(server, server.token(alice))
            await client.connect()
            ack = await client.subscribe("long")
            if not ack["ok"]:
                await client.close()
                return None
            return client, ack

        result = None
        for _ in range(200):  # slots are released as the server notices the closes
            result = await allowed()
            if result is not None:
                break
            await asyncio.sleep(0.05)
        assert result is not None, "alice's slots were never released"
        client, ack = result
        assert ack["replayed"] == len(a_seqs)
        seqs = [e["seq"] for batch in client.live("task_events") for e in batch["events"]]
        assert seqs == a_seqs  # every event once, oldest first
        assert all(len(b["events"]) <= 50 for b in client.live("task_events"))
        for c in (client, probe, bob_client):
            await c.close()

    asyncio.run(main())
    assert server.health()[0] == 200


def test_connection_backlog_refuses_and_answers_the_ack(limited_server):
    """One connection: 1 replay streams (stalled), 1 waits, the 3rd is refused."""
    server = limited_server
    user = uid("carol")
    asyncio.run(long_log(user, "long"))
    poller = StalledPoller(server, server.token(user))
    try:
        poller.subscribe("long", ack_id=1)
        poller.subscribe("long", ack_id=2)
        poller.subscribe("long", ack_id=3)
        refusal = wait_until(lambda: next((p for p in poller.poll() if p.startswith("433[")),
                                          None), message="the ack of the 3rd subscribe")
        ack = json.loads(refusal[3:])[0]
        assert ack["ok"] is False and ack["error"]["type"] == "too_many_replays"
        assert "this connection (limit 2)" in ack["error"]["message"]
    finally:
        poller.close()


def test_fair_share_other_users_live_events_arrive_during_replays(limited_server):
    """Alice's allowed replays (two sockets, long log) are under way when bob's live event
    is published; it reaches bob before alice's replays are acknowledged (order of
    arrival in one timeline), and alice's replays are still complete and in order."""
    server = limited_server
    alice, bob = uid("alice"), uid("bob")
    timeline: list[tuple[str, object]] = []

    async def main():
        a_seqs = await long_log(alice, "long", 3000)
        sockets = []
        for i in range(2):
            sio = socketio.AsyncClient()
            sio.on("task_events", lambda data, i=i: timeline.append(
                (f"batch{i}", [e["seq"] for e in data["events"]])))
            await sio.connect(server.url, auth={"token": server.token(alice)},
                              transports=["websocket"])
            sockets.append(sio)
        bob_sio = socketio.AsyncClient()
        bob_sio.on("task_event", lambda data: timeline.append(("bob", data["seq"])))
        await bob_sio.connect(server.url, auth={"token": server.token(bob)},
                              transports=["websocket"])

        async def replay(i: int, sio):
            ack = await sio.call("subscribe", {"task_id": "long", "after_seq": 0}, timeout=60)
            timeline.append((f"ack{i}", ack))
            return ack

        replays = [asyncio.ensure_future(replay(i, s)) for i, s in enumerate(sockets)]
        await async_wait_until(lambda: any(n.startswith("batch") for n, _ in timeline),
                               message="the first replay batch")
        from aiecs_worker.store.events import RedisEventPublisher

        pub = RedisEventPublisher(os.environ["REDIS_URL"])
        await pub.publish(event(bob, "live", "stream", delta="now"))
        await pub.aclose()
        acks = await asyncio.gather(*replays)
        await async_wait_until(lambda: any(n == "bob" for n, _ in timeline),
                               message="bob's live event")
        names = [n for n, _ in timeline]
        assert names.index("bob") < max(names.index("ack0"), names.index("ack1")), names
        for i, ack in enumerate(acks):
            assert ack["ok"] and ack["replayed"] == len(a_seqs)
            seqs = [s for n, batch in timeline if n == f"batch{i}" for s in batch]
            assert seqs == a_seqs
        for sio in (*sockets, bob_sio):
            await sio.disconnect()

    asyncio.run(main())


def test_rate_limit_then_abusive_connection_disconnected(start_server):
    server = start_server(os.environ["REDIS_URL"], env={
        "AIECS_SUBSCRIBE_BURST": "3", "AIECS_SUBSCRIBE_RATE": "0.01",
        "AIECS_SUBSCRIBE_REFUSALS_MAX": "4"})

    async def main():
        client = Recorder(server, server.token(uid()))
        client.sio.reconnection = False
        await client.connect()
        for _ in range(3):
            assert (await client.subscribe(uid("t")))["ok"]
        for _ in range(3):
            ack = await client.sio.call("subscribe", {"task_id": "t", "after_seq": 0},
                                        timeout=10)
            assert ack["ok"] is False and ack["error"]["type"] == "rate_limited"
            assert 0 < ack["error"]["retry_after"] <= 100
            assert client.sio.connected
        ack = await client.sio.call("subscribe", {"task_id": "t", "after_seq": 0}, timeout=10)
        assert ack["error"]["type"] == "rate_limited"  # the 4th refusal in a row ...
        await async_wait_until(lambda: not client.sio.connected, message="disconnect")
        errors = [e["error"]["type"] for e in client.live("request_error")]
        assert errors[-1] == "abusive"
        # another connection of the same user has a bucket of its own
        other = Recorder(server, client.token)
        await other.connect()
        assert (await other.subscribe(uid("t")))["ok"]
        await other.close()

    asyncio.run(main())
    assert "disconnecting a connection of user" in server.log()


def test_after_seq_past_the_end_answers_the_real_last_seq(progress_server):
    async def main():
        user = uid()
        seqs = await long_log(user, "short", 3)
        client = Recorder(progress_server, progress_server.token(user))
        await client.connect()
        ack = await client.sio.call("subscribe", {"task_id": "short", "after_seq": 1000},
                                    timeout=10)
        assert ack["ok"] and ack["replayed"] == 0 and ack["first_seq"] is None
        assert ack["last_seq"] == seqs[-1] == 5 and ack["exists"] is True
        # and for a task whose log is gone entirely
        ack = await client.sio.call("subscribe", {"task_id": "gone", "after_seq": 7},
                                    timeout=10)
        assert ack["ok"] and ack["last_seq"] == 0 and ack["exists"] is False
        await client.close()

    asyncio.run(main())
