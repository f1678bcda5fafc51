"""Redis restarts while a real worker runs a task and a client watches it."""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis

from tests.server.helpers import Recorder, async_wait_until, uid
from tests.support.events import wait_terminal

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


def restart_keeping_data(server) -> None:
    """Restart Redis as an operator would (SHUTDOWN SAVE, start again on the same port and
    directory). The test Redis runs without persistence, so a plain kill would lose the
    queue, the states and the logs; a production Redis keeps them."""
    client = server.client(socket_connect_timeout=2)
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(save=True)
    server.proc.wait(timeout=20)
    server.proc = None
    time.sleep(0.5)  # a moment of real outage
    server.start()


def test_redis_restart_during_a_task(progress_server, aiecs_redis, worker):
    """Events resume, the task completes, the log has no hole, and the watching client ends
    with exactly the log's events, in order, once each."""
    server, user = progress_server, uid()
    token = server.token(user)

    async def main():
        client = Recorder(server, token)
        await client.connect()
        status, out = await asyncio.to_thread(
            server.http, "POST", "/tasks",
            {"mode": "test", "service": "echo", "task_name": "echo",
             "input_data": {"text": "abcdefghij" * 6, "chunks": 30, "delay": 0.15}},
            token=token)
        assert status == 202, out
        task_id = out["task_id"]
        await client.subscribe(task_id)
        await async_wait_until(lambda: len(client.events(task_id)) >= 8, timeout=30,
                               message="the task streaming")
        await asyncio.to_thread(restart_keeping_data, aiecs_redis)
        after_restart = len(client.events(task_id))

        def finished():
            evs = client.events(task_id)
            return evs and evs[-1]["type"] == "status" and evs[-1]["status"] in TERMINAL

        await async_wait_until(finished, timeout=60, message=lambda: (
            f"the terminal event; applied {[e['seq'] for e in client.events(task_id)]}, "
            f"health {server.health()}"))
        await client.close()
        return task_id, after_restart, client.events(task_id)

    task_id, after_restart, applied = asyncio.run(main())
    r = aiecs_redis.client()
    terminal, log = wait_terminal(r, user, task_id, timeout=30)
    assert terminal["status"] == "completed"
    assert terminal["result"] == {"text": "abcdefghij" * 6, "chunks": 30}
    seqs = [e["seq"] for e in log]
    assert seqs == list(range(1, len(seqs) + 1)), "hole in the log"
    assert seqs[-1] > after_restart, "no event after the restart"
    # the client, connected throughout, applied exactly the log: nothing missing, no dups
    assert applied == log
    status, health = server.health()
    assert status == 200 and health["pubsub_listener"], health
    r.close()
