"""Lua scripts in a pipeline go as EVALSHA, one round trip, with no SCRIPT EXISTS before
it; a Redis that does not know a script (new, restarted, flushed) gets it loaded and the
refused commands sent again, each script running once."""

from __future__ import annotations

from aiecs_core import TaskCancelledError, TaskRequest, TaskStatus
from aiecs_worker.store.keys import PREFIX, celery_index_key
from aiecs_worker.store.records import end_execution, record_pending
from aiecs_worker.store.scripts import pipelined

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
