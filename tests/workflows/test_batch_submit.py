"""A big batch is accepted in one call, its records pipelined (no worker runs here, so
Redis counts only this process's requests)."""

from __future__ import annotations

from aiecs_worker.producer.batch import get_batch, submit_batch

from tests.workflows.test_batch import echo


def test_big_batch_is_one_call_with_pipelined_records(aiecs_redis):
    """2,000 items in one call: every item PENDING with its group, in a few round trips
    per 500 items (records, then messages, each pipelined), where single submissions
    cost several each (the PENDING script, the message, the result subscription)."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()

    def reads() -> int:
        return int(client.info("stats")["total_reads_processed"])

    n = 2000
    before = reads()
    submit_batch("alice", [echo(f"doc {i}") for i in range(n)], batch_id="big")
    batch_reads = reads() - before - 1  # the INFO itself
    pipe = client.pipeline()
    for i in range(n):
        pipe.hmget(f"aiecs:t:alice:big.{i}:1:state", "status", "group")
    assert set(map(tuple, pipe.execute())) == {(b"pending", b"aiecs:batch:alice:big")}
    assert get_batch("alice", "big", limit=0)["counts"]["total"] == n

    before = reads()
    for i in range(200):
        execute_task.delay(task_name="echo", user_id="alice", task_id=f"single{i}", step=1,
                           mode="test", service="echo", input_data={"text": "x"})
    single_reads = (reads() - before - 1) / 200
    # Redis counts reads of its socket: a pipeline of 500 messages (~700 kB) takes dozens,
    # more on a loaded machine (the kernel hands the server smaller chunks: 255-550 reads
    # per batch measured); unpipelined, each item would cost as many as a single's. These
    # singles wait behind alice's fair-share window (the batch filled it): one round trip
    # each, the PENDING record with its admission, no message sent yet.
    assert single_reads >= 1, single_reads
    assert batch_reads * 4 < single_reads * n, (batch_reads, single_reads)
