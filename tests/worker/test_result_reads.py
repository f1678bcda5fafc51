"""What ``AsyncResult.get()`` asks Redis for a result read from the one record (issue 20,
aiecs_worker.store.results), counted with Redis's SLOWLOG logging every command naming
the result's channel (a real worker, the session's redis-server):

- a finished result nobody in this process subscribed to (``AsyncResult(id).get()``, or
  an ``AsyncResult`` dropped and made again) is read with one ``EVALSHA`` of the record:
  no ``SUBSCRIBE`` then ``UNSUBSCRIBE`` around it (Celery's three round trips);
- results sent from here (subscribed at ``.delay()``), finished before their ``.get()``
  (a drain: many ``.delay()``, then ``.get()`` of each in order), are taken from the
  messages the terminal script published on their channels: no read of the record, and
  their channels unsubscribed together, not one ``UNSUBSCRIBE`` per result; none is left
  subscribed;
- a result not finished yet is still waited for (subscribe, read, woken by the publish);
- the meta built from the record for a read is the one the publish carries.
"""

from __future__ import annotations

import contextlib
import json
import uuid

import psutil
import pytest
from aiecs_core import InvalidRequestError
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult

from tests.support.events import wait_terminal

META = "celery-task-meta-"


def uid() -> str:
    return f"q{uuid.uuid4().hex[:10]}"


def echo(task_id: str, **inp) -> dict:
    inp.setdefault("text", "one two")
    return dict(task_name="echo", user_id="alice", task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


@contextlib.contextmanager
def logged(client):
    """Every command logged meanwhile (SLOWLOG, threshold 0); yields a function returning
    the ``EVALSHA``, ``SUBSCRIBE`` and ``UNSUBSCRIBE`` this process sent that name one of
    the given Celery ids' channel/key, oldest first, as ``[(COMMAND, [names...])]`` (the
    commands a script calls are logged too: left out)."""
    old = client.config_get("slowlog-*")
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()

    def naming(ids: list[str]) -> list[tuple[str, list[str]]]:
        keys = {f"{META}{i}" for i in ids}
        ours = {f"{c.laddr.ip}:{c.laddr.port}".encode()
                for c in psutil.Process().net_connections(kind="tcp") if c.raddr}
        out = []
        for entry in reversed(client.execute_command("SLOWLOG", "GET", -1)):
            args = [a.decode(errors="replace") for a in entry[3]]
            named = [a for a in args[1:] if a in keys]
            if (named and entry[4] in ours
                    and args[0].upper() in ("EVALSHA", "SUBSCRIBE", "UNSUBSCRIBE")):
                out.append((args[0].upper(), named))
        return out

    try:
        yield naming
    finally:
        for name, value in old.items():
            client.config_set(name, value)
        client.slowlog_reset()


def test_a_finished_result_is_read_once_without_a_subscription(aiecs_redis, worker):
    from aiecs_worker import app, execute_task
    from aiecs_worker.producer.control import cancel

    client = aiecs_redis.client()
    done = execute_task.delay(**echo(uid()))
    out = done.get(timeout=30)
    failed = execute_task.delay(**echo(uid(), fail="invalid"))
    with pytest.raises(InvalidRequestError) as info:
        failed.get(timeout=30)
    revoked_id = uid()
    revoked = execute_task.apply_async(kwargs=echo(revoked_id), countdown=600)
    assert cancel("alice", revoked_id, 1)
    wait_terminal(client, "alice", revoked_id)
    ids = [done.id, failed.id, revoked.id]
    del done, failed, revoked  # dropped: their channels given up

    with logged(client) as naming:
        assert AsyncResult(ids[0], app=app).get(timeout=30) == out
        with pytest.raises(InvalidRequestError) as again:
            AsyncResult(ids[1], app=app).get(timeout=30)
        with pytest.raises(TaskRevokedError):
            AsyncResult(ids[2], app=app).get(timeout=30)
        commands = naming(ids)
    assert again.value.message == info.value.message
    assert again.value.details == info.value.details
    # one read of the record each; before: SUBSCRIBE, EVALSHA, UNSUBSCRIBE
    assert [c for c, _ in commands] == ["EVALSHA"] * 3, commands
    client.close()


def test_a_drain_takes_the_published_results_and_unsubscribes_together(aiecs_redis,
                                                                       worker):
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    execute_task.delay(**echo(uid())).get(timeout=30)  # the consumer started
    n = 20
    tasks = [uid() for _ in range(n)]
    sent = [execute_task.delay(**echo(t)) for t in tasks]
    for t in tasks:
        wait_terminal(client, "alice", t)
    # one more round trip: the event loop turn that ran the last terminal script (and
    # wrote its publish to this process's subscription) is over
    client.ping()
    ids = [r.id for r in sent]
    with logged(client) as naming:
        outs = [r.get(timeout=30) for r in sent]
        commands = naming(ids)
    assert [o["status"] for o in outs] == ["completed"] * n
    assert [o["task_id"] for o in outs] == tasks
    # no read of the record (before: one EVALSHA per result) ...
    assert not [c for c, _ in commands if c != "UNSUBSCRIBE"], commands
    # ... and every channel given up, in fewer commands than results (before: one each)
    unsubscribed = [name for c, names in commands if c == "UNSUBSCRIBE" for name in names]
    assert sorted(unsubscribed) == sorted(f"{META}{i}" for i in ids)
    assert len([c for c, _ in commands if c == "UNSUBSCRIBE"]) < n, commands
    consumer = sent[0].backend.result_consumer
    assert not {f"{META}{i}" for i in ids} & {
        k.decode() if isinstance(k, bytes) else k for k in consumer.subscribed_to}
    numsub = dict(client.pubsub_numsub(*(f"{META}{i}" for i in ids)))
    assert set(numsub.values()) == {0}, numsub
    client.close()


def test_a_result_not_finished_is_still_waited_for(aiecs_redis, worker):
    from aiecs_worker import app, execute_task
    from aiecs_worker.store.results import unwatched

    client = aiecs_redis.client()
    task = uid()
    with unwatched():  # nobody here subscribed at the send
        sent = execute_task.delay(**echo(task, delay=0.5, chunks=2))
    celery_id = sent.id
    del sent
    with logged(client) as naming:
        out = AsyncResult(celery_id, app=app).get(timeout=30)
        commands = [c for c, _ in naming([celery_id])]
    assert out["status"] == "completed" and out["result"]["text"] == "one two"
    # read (running), subscribed, read again (the publish may have come in between), woken
    assert commands[:3] == ["EVALSHA", "SUBSCRIBE", "EVALSHA"], commands
    assert "UNSUBSCRIBE" in commands
    client.close()


@pytest.mark.parametrize("fields", [
    ("completed", '{"status":"completed","result":{"text":"hi","n":[1,2.5,null]}}', "",
     "1765000000.25"),
    ("failed", "", json.dumps({"type": "InvalidRequestError", "message": "bad",
                               "details": {"field": "x"}}), "1765000000"),
    ("failed", "", "", ""),
    ("cancelled", "", json.dumps({"message": "by the user"}), "1765000001.5"),
])
def test_the_read_meta_is_the_published_meta(fields):
    """The meta a read builds as a dict is what Celery decodes from the JSON the terminal
    script publishes (and from the ``mget`` of a reconnect)."""
    from aiecs_worker.store.results import celery_meta, record_meta
    from kombu.utils.json import loads

    published = loads('{"task_id":"abc",' + celery_meta(*fields)[1:])
    assert record_meta("abc", *fields) == published
    assert list(record_meta("abc", *fields)) == list(published)
