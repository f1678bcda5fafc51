"""Direct send (aiecs_worker.runner.send): a ``.delay()`` whose broker is the state Redis has
its Celery message pushed by the script that records it PENDING, one round trip.

The message in the list is the one Celery + kombu push for the same call (Celery's own
publish is what an ``apply_async`` with any option still uses: the reference); real
workers (threads, asyncio) run it; a held execution and a refused budget push nothing;
a broker that is not the state Redis (RabbitMQ, another Redis, another database) and a
receiver of Celery's publish signals keep Celery's publish.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.events import wait_terminal, wait_until

USER = "ds"
FAST_LIST = "fast_tasks\x06\x169"  # kombu's list of fast_tasks at priority 10
HEAVY_LIST = "heavy_tasks\x06\x163"  # heavy_tasks at priority 5
ROOT = Path(__file__).resolve().parents[2]


def call(task_id: str, user: str = USER, **inp) -> dict:
    inp.setdefault("text", "one two three")
    return dict(task_name="echo", user_id=user, task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={"k": [1, "a"], "n": None})


def new_id() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


def messages(client, key: str = FAST_LIST) -> list[dict]:
    return [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]


def reads(client) -> int:
    """Request batches Redis has read (one per round trip: a pipeline counts once)."""
    return int(client.info("stats")["total_reads_processed"])


@pytest.fixture
def direct(aiecs_redis):
    """The session Redis (broker and state), this process's plans made afresh."""
    from aiecs_worker.runner import send

    send.reset()
    yield aiecs_redis.client()
    send.reset()


@pytest.mark.parametrize(("task_name", "key"), [("execute_task", FAST_LIST),
                                                 ("execute_heavy_task", HEAVY_LIST)])
def test_the_direct_message_is_the_one_celery_pushes(direct, task_name, key):
    """The same execution sent through Celery's publish (an option: ``priority``, equal to
    its route's) and then directly (``.delay``: it has a state, so it is sent again, as
    before): the two list entries are equal but for kombu's random delivery tag."""
    import aiecs_worker
    from aiecs_worker.runner import send
    from aiecs_worker.store.records import state_redis

    task = getattr(aiecs_worker, task_name)
    client = direct
    kwargs = call(new_id())
    priority = 10 if key == FAST_LIST else 5
    first = task.apply_async(kwargs=kwargs, priority=priority)  # Celery's publish
    assert send.plan(task, state_redis()) is not None
    before = reads(client)
    result = task.delay(**kwargs)
    # its pipeline and the INFO (the result subscription was made by the first send, still
    # alive): no LPUSH of its own (Celery's publish: 3)
    assert reads(client) - before == 2
    assert first.id == result.id
    celery_msg, direct_msg = messages(client, key)
    assert celery_msg["properties"].pop("delivery_tag") != \
        direct_msg["properties"].pop("delivery_tag")
    assert direct_msg["headers"] == celery_msg["headers"]
    assert direct_msg == celery_msg
    assert result.id == celery_msg["headers"]["id"] and result.state == "PENDING"
    body = json.loads(base64.b64decode(direct_msg["body"]))
    assert body == [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                 "chord": None}]


def test_kwargsrepr_is_repr_cut_at_celerys_size(direct):
    """The one deliberate difference: ``kwargsrepr`` is ``repr`` (values deeper than three
    levels shown, not ``{...}``), cut at 1,024 characters like Celery's; a large input
    gets Celery's own saferepr."""
    from aiecs_worker import execute_task
    from celery.utils.saferepr import saferepr

    deep = call(new_id(), nested={"a": {"b": {"c": 1}}})
    long = call(new_id(), text="x" * 3000)
    huge = call(new_id(), text="y" * 40000)
    for kwargs in (deep, long, huge):
        execute_task.delay(**kwargs)
    deep_m, long_m, huge_m = messages(direct)
    assert deep_m["headers"]["kwargsrepr"] == repr(deep)
    assert long_m["headers"]["kwargsrepr"] == repr(long)[:1024] + "..."
    assert huge_m["headers"]["kwargsrepr"] == saferepr(huge, 1024, maxlevels=3)


def test_one_round_trip_per_submission(direct):
    """Each ``.delay`` of a new execution: its pipeline (record, event, admission and the
    message) and the result subscription; Celery's publish added a round trip (LPUSH)."""
    from aiecs_worker import execute_task

    execute_task.delay(**call(new_id()))  # scripts loaded, connections made
    n = 10
    before = reads(direct)
    results = [execute_task.delay(**call(new_id())) for _ in range(n)]  # kept: a result
    # dropped unsubscribes
    used = reads(direct) - before - 1  # the INFO reading it
    assert used == 2 * n, used
    assert direct.llen(FAST_LIST) == n + 1 and len(results) == n


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_workers_run_direct_messages(direct, start_worker, pool):
    from aiecs_worker import execute_task
    from aiecs_worker.runner import send
    from aiecs_worker.store.records import state_redis

    start_worker(pool=pool, concurrency=2)
    ids = [new_id() for _ in range(4)]
    results = [execute_task.delay(**call(t, chunks=2)) for t in ids]
    assert send.plan(execute_task, state_redis()) is not None
    for t, r in zip(ids, results, strict=True):
        assert isinstance(r.get(timeout=60), dict)
        terminal, _ = wait_terminal(direct, USER, t, timeout=60)
        assert terminal["status"] == "completed"


def test_a_held_execution_is_not_pushed(direct, submitter_env):
    """Beyond the user's fair-share window: held, nothing in the broker (a releaser sends
    it when the first one ends), as before."""
    from aiecs_worker import execute_task

    submitter_env(AIECS_FAIR_WINDOW_FAST="1")
    first, second = new_id(), new_id()
    execute_task.delay(**call(first))
    r = execute_task.delay(**call(second))
    assert r.state == "PENDING"
    [m] = messages(direct)
    assert m["headers"]["kwargsrepr"].count(first) == 1
    assert direct.hget(f"aiecs:t:{USER}:{second}:1:state", "held") == b"fair"


def test_a_refused_budget_pushes_nothing(direct, submitter_env):
    from aiecs_core import BudgetExceededError
    from aiecs_worker import execute_task

    submitter_env(AIECS_PRICES=json.dumps({"openai/gpt-x": {"input": 1000, "output": 1000}}),
                  AIECS_BUDGETS=json.dumps([{"period": "day", "kind": "usd", "hard": 1e-6}]))
    kwargs = dict(task_name="chat", user_id=USER, task_id=new_id(), step=1, mode="llm",
                  service="openai", context={},
                  input_data={"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}],
                              "max_output_tokens": 100})
    with pytest.raises(BudgetExceededError):
        execute_task.delay(**kwargs)
    assert not direct.exists(FAST_LIST)
    assert not direct.exists(f"aiecs:t:{USER}:{kwargs['task_id']}:1:state")


def test_a_publish_signal_receiver_keeps_celerys_publish(direct):
    """A receiver of ``before_task_publish`` (aiecs's tracing connects one) sees every
    message: such a process sends through Celery."""
    from aiecs_worker import execute_task
    from celery import signals

    seen = []

    def receiver(sender=None, headers=None, **_):
        seen.append((sender, headers["id"]))

    signals.before_task_publish.connect(receiver)
    try:
        r = execute_task.delay(**call(new_id()))
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [("aiecs.tasks.worker.execute_task", r.id)]
    assert direct.llen(FAST_LIST) == 1


def test_a_global_keyprefix_or_eager_mode_keeps_celerys_publish(direct):
    from aiecs_worker import execute_task
    from aiecs_worker.app import app
    from aiecs_worker.runner import send
    from aiecs_worker.store.records import state_redis

    saved = dict(app.conf.broker_transport_options)
    app.conf.broker_transport_options = {**saved, "global_keyprefix": "p:"}
    try:
        assert send.plan(execute_task, state_redis()) is None
    finally:
        app.conf.broker_transport_options = saved
        send.reset()
    assert send.plan(execute_task, state_redis()) is not None
    app.conf.task_always_eager = True
    try:
        assert not send.eligible({}, ())
    finally:
        app.conf.task_always_eager = False
    assert send.eligible({}, ()) and not send.eligible({"countdown": 1}, ())


PRODUCER = """
import json, sys
from aiecs_worker import execute_task
from aiecs_worker.runner import send
from aiecs_worker.store.records import state_redis
plan = send.plan(execute_task, state_redis())
for kwargs in json.loads(sys.argv[1]):
    execute_task.delay(**kwargs)
print(json.dumps({"direct": plan is not None}))
"""


def produce(calls: list[dict], *, broker_url: str, redis_url: str, **env_vars: str) -> dict:
    """Submit ``calls`` with ``.delay`` from a client process of these URLs."""
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, REDIS_URL=redis_url, **env_vars)
    out = subprocess.run([sys.executable, "-c", PRODUCER, json.dumps(calls)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_same_redis_sends_directly_from_a_client_process(direct):
    assert produce([call(new_id())], broker_url=os.environ["REDIS_URL"],
                   redis_url=os.environ["REDIS_URL"]) == {"direct": True}
    assert direct.llen(FAST_LIST) == 1


def test_direct_send_switched_off_keeps_celerys_publish(direct, start_worker):
    """AIECS_DIRECT_SEND=0: Celery's publish (two round trips), the message queued and run."""
    t = new_id()
    assert produce([call(t)], broker_url=os.environ["REDIS_URL"],
                   redis_url=os.environ["REDIS_URL"], AIECS_DIRECT_SEND="0") == {
        "direct": False}
    [msg] = messages(direct)
    assert msg["headers"]["id"] and msg["headers"]["task"] == "aiecs.tasks.worker.execute_task"
    start_worker(concurrency=2)
    terminal, _ = wait_terminal(direct, USER, t, timeout=60)
    assert terminal["status"] == "completed"


def test_another_broker_redis_keeps_celerys_publish(direct, redis_server, start_worker):
    """Broker on another Redis server: the message goes there, through Celery, and runs."""
    t = new_id()
    assert produce([call(t)], broker_url=redis_server.url,
                   redis_url=os.environ["REDIS_URL"]) == {"direct": False}
    assert not direct.exists(FAST_LIST)
    assert redis_server.client().llen(FAST_LIST) == 1
    start_worker(env={"CELERY_BROKER_URL": redis_server.url}, concurrency=2)
    terminal, _ = wait_terminal(direct, USER, t, timeout=60)
    assert terminal["status"] == "completed"


def test_another_database_of_the_same_redis_keeps_celerys_publish(direct):
    url = os.environ["REDIS_URL"]
    base = url.rsplit("/", 1)[0] if url.rsplit("/", 1)[-1].isdigit() else url.rstrip("/")
    url = base
    assert produce([call(new_id())], broker_url=url + "/1", redis_url=url + "/0") == {
        "direct": False}
    assert not direct.exists(FAST_LIST)
    db1 = type(direct)(host=direct.connection_pool.connection_kwargs["host"],
                       port=direct.connection_pool.connection_kwargs["port"], db=1)
    try:
        assert db1.llen(FAST_LIST) == 1
    finally:
        db1.flushdb()
        db1.close()


def test_rabbitmq_keeps_celerys_publish(direct, start_worker, rabbit_vhost):
    t = new_id()
    start_worker(env={"CELERY_BROKER_URL": rabbit_vhost.url}, concurrency=2)
    assert produce([call(t)], broker_url=rabbit_vhost.url,
                   redis_url=os.environ["REDIS_URL"]) == {"direct": False}
    terminal, _ = wait_terminal(direct, USER, t, timeout=60)
    assert terminal["status"] == "completed"
    assert not direct.exists(FAST_LIST)
    wait_until(lambda: rabbit_vhost.queue_depth("fast_tasks") == 0)


def test_the_celery_id_is_the_uuid5_of_the_execution():
    """``celery_task_id`` computes uuid5 without a UUID object: the same ids as before."""
    from aiecs_worker.store.events import _CELERY_ID_NAMESPACE, celery_task_id

    for user, task, step in [("u", "t", 1), ("ann", "q-9", 12), ("ü-ß", "日本", 3),
                             ("x" * 200, "y:z", 0)]:
        assert celery_task_id(user, task, step) == str(
            uuid.uuid5(_CELERY_ID_NAMESPACE, f"{user}:{task}:{step}"))


def test_an_unwatched_direct_send_subscribes_to_nothing(direct):
    """Inside ``store.results.unwatched`` (``POST /tasks``) the direct send, like Celery's,
    makes no result subscription: its pipeline is its only round trip."""
    from aiecs_worker import execute_task
    from aiecs_worker.store.results import unwatched

    execute_task.delay(**call(new_id()))  # scripts loaded, connections made
    before = reads(direct)
    with unwatched():
        kept = execute_task.delay(**call(new_id()))
    assert reads(direct) - before == 2  # the pipeline and the INFO
    assert direct.llen(FAST_LIST) == 2 and kept.state == "PENDING"
