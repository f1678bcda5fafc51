"""A cluster on one machine: two progress servers and three workers sharing one broker and
one Redis, with one worker SIGKILLed mid-run.

- workers: ``fast-a`` and ``fast-b`` (threads, ``fast_tasks``, two hostnames) and
  ``heavy`` (prefork, ``heavy_tasks``); servers: two ``aiecs serve`` on two ports;
- tasks are submitted through both servers' HTTP APIs, alternately; one Socket.IO client
  on each server subscribes to every task (those submitted through the other server too)
  and must receive every event of each, in order, as the durable log in Redis has it;
- two long tasks are cancelled, one through each server;
- ``fast-a`` is SIGKILLed while it runs executions: the others carry on, its executions
  run again elsewhere, and every execution ends exactly once (counted from Redis).

Run with Redis as broker and with RabbitMQ (a private vhost of the machine's server).
The lease is shortened to 6 s (``AIECS_LEASE_SECONDS``) so that a dead worker's
executions are queued again sooner with Redis as broker; nothing else is tuned.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.server.helpers import Recorder, async_wait_until, uid
from tests.support.events import TERMINAL, read_events, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

FAST, HEAVY, LONG = 12, 4, 2


def body(op: str = "echo", chunks: int = 4, delay: float = 0.3,
         text: str = "one two three four five six") -> dict:
    return {"mode": "test", "service": "echo", "task_name": op,
            "input_data": {"text": text, "chunks": chunks, "delay": delay}}


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request, redis_server) -> str:
    if request.param == "redis":
        return redis_server.url
    return request.getfixturevalue("rabbit_vhost").url


def test_two_servers_three_workers_one_killed(redis_server, broker, start_worker,
                                              start_server):
    env = {"CELERY_BROKER_URL": broker, "AIECS_LEASE_SECONDS": "6"}
    fast_a = start_worker(redis_url=redis_server.url, name="fast-a", pool="threads",
                          concurrency=4, queues="fast_tasks", env=env)
    fast_b = start_worker(redis_url=redis_server.url, name="fast-b", pool="threads",
                          concurrency=4, queues="fast_tasks", env=env)
    heavy = start_worker(redis_url=redis_server.url, name="heavy", pool="prefork",
                         concurrency=2, queues="heavy_tasks", env=env)
    servers = [start_server(redis_server.url, env={"CELERY_BROKER_URL": broker})
               for _ in range(2)]
    user = uid("cluster")
    redis = redis_server.client()

    def owner_pid(task_id: str) -> int | None:
        owner = redis.hget(f"aiecs:t:{user}:{task_id}:1:state", "owner")
        return int(owner.decode().rsplit(":", 2)[1]) if owner else None

    def status(task_id: str) -> str | None:
        raw = redis.hget(f"aiecs:t:{user}:{task_id}:1:state", "status")
        return raw.decode() if raw else None

    async def submit(i: int, payload: dict) -> str:
        server = servers[i % 2]
        code, out = await asyncio.to_thread(server.http, "POST", "/tasks", payload,
                                            token=server.token(user))
        assert code == 202, out
        return out["task_id"]

    async def main():
        clients = [Recorder(server, server.token(user)) for server in servers]
        for client in clients:
            await client.connect()
        fast = [await submit(i, body()) for i in range(FAST)]
        heavies = [await submit(i, body("echo_heavy", chunks=3)) for i in range(HEAVY)]
        long = [await submit(i, body(chunks=300, delay=0.1, text="x" * 300)) for i in range(LONG)]
        ids = fast + heavies + long
        for client in clients:
            for task_id in ids:
                assert (await client.subscribe(task_id))["ok"]

        # fast-a dies while it runs executions
        await async_wait_until(
            lambda: any(owner_pid(t) == fast_a.proc.pid and status(t) == "running"
                        for t in fast + long),
            timeout=60, message="an execution running on fast-a")
        os.kill(fast_a.proc.pid, signal.SIGKILL)
        fast_a.proc.wait(10)
        killed = fast_a.proc.pid

        # each long task is cancelled through the other server than it was submitted to,
        # once it runs on a live worker
        for i, task_id in enumerate(long):
            await async_wait_until(
                lambda t=task_id: status(t) == "running" and owner_pid(t) not in (None, killed),
                timeout=90, message=lambda t=task_id: f"{t} running on a live worker: "
                f"{redis.hgetall(f'aiecs:t:{user}:{t}:1:state')}")
            server = servers[(i + 1) % 2]
            code, out = await asyncio.to_thread(server.http, "DELETE", f"/tasks/{task_id}",
                                                token=server.token(user))
            assert (code, out) == (202, {"task_id": task_id, "cancelling": [1]})

        def all_delivered():
            return all(
                (evs := client.events(t)) and evs[-1]["type"] == "status"
                and evs[-1]["status"] in TERMINAL
                for client in clients for t in ids)

        await async_wait_until(all_delivered, timeout=180,
                               message="every terminal event at both clients")
        received = {(n, t): [e["seq"] for e in client.events(t)]
                    for n, client in enumerate(clients) for t in ids}
        for client in clients:
            await client.close()
        return fast, heavies, long, received

    fast, heavies, long, received = asyncio.run(main())

    reruns = 0
    for task_id in fast + heavies + long:
        events = read_events(redis, user, task_id)
        terminals = [e for e in events if e["type"] == "status" and e["status"] in TERMINAL]
        assert len(terminals) == 1, (task_id, terminals)  # exactly once
        want = "cancelled" if task_id in long else "completed"
        assert terminals[0]["status"] == status(task_id) == want, (task_id, terminals[0])
        runs = [e for e in events if e["type"] == "status" and e["status"] == "running"]
        reruns += len(runs) - 1
        # both clients got every event of the task, whichever server it went through
        for n in range(2):
            assert received[(n, task_id)] == [e["seq"] for e in events], (n, task_id)
    assert reruns >= 1  # fast-a's executions ran again on the others
    assert fast_b.alive() and heavy.alive()
    for server in servers:
        assert server.health()[0] == 200
    wait_until(lambda: redis.zcard("aiecs:pending") == 0, timeout=10,
               message="no execution left pending")
