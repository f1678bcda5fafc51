"""Lua scripts in a pipeline go as EVALSHA, one round trip, with no SCRIPT EXISTS before
it; a Redis that does not know a script (new, restarted, flushed) gets it loaded and the
refused commands sent again, each script running once."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiecs_core import TaskCancelledError, TaskRequest, TaskStatus
from aiecs_worker.store.keys import PREFIX, celery_index_key
from aiecs_worker.store.records import end_execution, record_pending
from aiecs_worker.store.scripts import Coalesced, pipelined

INCR_LUA = "return redis.call('INCR', KEYS[1])"


def calls(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def test_a_refused_script_is_loaded_and_run_once(redis_server):
    client = redis_server.client()
    out = pipelined(client, [(None, "SET", "a", "1"), (INCR_LUA, 1, "n"),
                             (INCR_LUA, 1, "m")])
    assert out[1:] == [1, 1]
    assert client.get("n") == b"1" and client.get("m") == b"1"
    # loaded once, now known: the next pipeline sends EVALSHA alone
    before = calls(client)
    assert pipelined(client, [(INCR_LUA, 1, "n")]) == [2]
    after = calls(client)
    assert after["evalsha"] - before["evalsha"] == 1
    assert after.get("script|load", 0) == before.get("script|load", 0)
    assert "script|exists" not in after


def test_a_transaction_is_sent_again_whole(redis_server):
    client = redis_server.client()
    client.set("n", 5)
    prior, n = pipelined(client, [(None, "GET", "n"), (INCR_LUA, 1, "n")], transaction=True)
    assert (prior, n) == (b"5", 6)
    client.script_flush()
    prior, n = pipelined(client, [(None, "GET", "n"), (INCR_LUA, 1, "n")], transaction=True)
    assert (prior, n) == (b"6", 7)


def test_calls_made_in_one_turn_share_one_round_trip(redis_server):
    """Coalesced (the worker's begin transition): the calls made in the same turn of the
    loop go out in one pipeline (one read for Redis), each run once, each caller given its
    own reply or its own error; a flushed Redis gets the script loaded again and each
    refused call sent again once."""
    sync = redis_server.client()
    sync.set("text", "not a number")

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            incr = Coalesced(client, INCR_LUA)
            await incr(keys=["warm"])  # the script loaded, a connection made
            reads = sync.info("stats")["total_reads_processed"]
            out = await asyncio.gather(*(incr(keys=[k]) for k in "abcab"),
                                       incr(keys=["text"]), return_exceptions=True)
            # one read for the five calls and the failing one, one for the INFO call
            assert sync.info("stats")["total_reads_processed"] - reads == 2
            assert out[:5] == [1, 1, 1, 2, 2]
            assert isinstance(out[5], Exception) and "not an integer" in str(out[5])
            sync.script_flush()
            assert await asyncio.gather(incr(keys=["a"]), incr(keys=["c"])) == [3, 2]
        finally:
            await client.aclose()

    asyncio.run(main())
    assert [sync.get(k) for k in "abc"] == [b"3", b"2", b"2"]


def test_coalesced_calls_fail_together_when_redis_is_away(redis_server):
    """A round trip that fails (Redis gone) is every caller's failure; the next calls,
    Redis back, run."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url, socket_connect_timeout=1)
        try:
            incr = Coalesced(client, INCR_LUA)
            assert await incr(keys=["n"]) == 1
            redis_server.stop()
            out = await asyncio.gather(incr(keys=["n"]), incr(keys=["m"]),
                                       return_exceptions=True)
            assert all(isinstance(r, Exception) for r in out), out
            redis_server.start()
            assert await asyncio.gather(incr(keys=["n"]), incr(keys=["m"])) in ([1, 1],
                                                                                 [2, 1])
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_submission_sends_no_script_exists(aiecs_redis):
    client = aiecs_redis.client()
    client.script_flush()  # as after a Redis restart: the scripts are loaded on NOSCRIPT

    def request(task_id: str) -> TaskRequest:
        return TaskRequest(task_name="echo", user_id="alice", task_id=task_id, step=1,
                           mode="sync", service="test", input_data={"text": "x"})

    assert record_pending(request("t1"), "c1", queue="fast_tasks") == "send"
    before = calls(client)
    assert record_pending(request("t2"), "c2", queue="fast_tasks") == "send"
    after = calls(client)
    assert "script|exists" not in after
    assert after.get("script|load", 0) == before.get("script|load", 0)
    assert client.get(celery_index_key("c2", PREFIX)) is not None
    client.script_flush()
    assert end_execution(client, request("t1"), TaskStatus.CANCELLED,
                         TaskCancelledError("no")) > 0
    indexed = client.get(celery_index_key("c1", PREFIX)).decode()
    assert client.hget(indexed, "status") == b"cancelled"


def test_a_script_is_the_same_text_in_every_process():
    """Redis knows a script by its SHA1: every process (whatever its hash seed) must send
    the same text, or Redis keeps one copy per process and each loads its own."""
    import os
    import subprocess
    import sys

    code = ("import hashlib; from aiecs_worker.store import events, results; print("
            "*(hashlib.sha1(s.encode()).hexdigest() for s in (events.FINISH_PUBLISH_LUA,"
            " events.BEGIN_PUBLISH_LUA, results.READ_LUA)))")
    shas = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}
                           ).stdout for seed in range(1, 7)}
    assert len(shas) == 1, shas
