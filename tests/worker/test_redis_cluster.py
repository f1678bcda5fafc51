"""aiecs's state and events on a real Redis Cluster (three masters, every slot covered),
the Celery broker and result backend on a plain Redis beside it (kombu cannot use a
cluster): ``REDIS_URL`` names a cluster node, ``AIECS_REDIS_CLUSTER=1``.

Every aiecs process here is a child (worker, server, ``aiecs health``): the key names are
fixed as aiecs is imported, and this process's aiecs uses the plain names. The test reads
the cluster with a ``RedisCluster`` client and the tagged key names: a user's keys under
its shard's tag (``{aiecs-<n>}:...``, AIECS_REDIS_SHARDS's default of 16 shards), the keys
of no user under ``{aiecs}``.

One cluster and one broker for the module; every test uses users of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib

import pytest
from aiecs_worker.store.keys import DEFAULT_CLUSTER_SHARDS, shard_number, shard_tag
from redis.cluster import RedisCluster as RedisClusterClient

from tests.server.helpers import Recorder, async_wait_until
from tests.support.events import TERMINAL, wait_until
from tests.support.metrics import metrics_url, scrape, total
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(300)

#: the prefix of the keys that belong to no user (cancel channel, dead letters, beat)
PREFIX = "{aiecs}"
SHARDS = DEFAULT_CLUSTER_SHARDS
#: every shard's tag
TAGS = [shard_tag(n, SHARDS) for n in range(SHARDS)]


def tag(user: str) -> str:
    """The hash tag of a user's keys on the cluster (its shard's)."""
    return shard_tag(shard_number(user, SHARDS), SHARDS)


def every_shard(client, suffix: str, count) -> int:
    """``count`` (e.g. ZCARD) of the per-shard key ``suffix`` summed over the shards."""
    return sum(count(t + suffix) for t in TAGS)


@pytest.fixture(scope="module")
def cluster():
    nodes = RedisCluster().start()
    yield nodes
    nodes.close()


@pytest.fixture(scope="module")
def broker():
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def env(cluster, broker) -> dict[str, str]:
    return {"CELERY_BROKER_URL": broker.url, "REDIS_URL": cluster.url,
            "AIECS_REDIS_CLUSTER": "1"}


@pytest.fixture
def client(cluster):
    c = cluster.client()
    yield c
    c.close()


def uid(what: str) -> str:
    return f"{what}{uuid.uuid4().hex[:8]}"


def body(chunks: int = 3, delay: float = 0.05, op: str = "echo", **extra) -> dict:
    return {"mode": "test", "service": "echo", "task_name": op,
            "input_data": {"text": "one two three four five six", "chunks": chunks,
                           "delay": delay}, **extra}


def state_key(user: str, task: str, step: int = 1) -> str:
    return f"{tag(user)}:t:{user}:{task}:{step}:state"


def events(client, user: str, task: str) -> list[dict]:
    return [json.loads(f[b"e"]) for _, f in client.xrange(f"{tag(user)}:t:{user}:{task}:log")]


def terminal(client, user: str, task: str, timeout: float = 60) -> dict:
    def ended():
        evs = events(client, user, task)
        ends = [e for e in evs if e["type"] == "status" and e["status"] in TERMINAL]
        return ends[-1] if ends else None
    return wait_until(ended, timeout=timeout, message=f"{task} ended")


def post_tasks(server, token: str, n: int, **kw) -> list[str]:
    """``n`` echo tasks (``body(**kw)``) submitted through the API: their ids."""
    ids = []
    for _ in range(n):
        code, out = server.http("POST", "/tasks", body(**kw), token=token)
        assert code == 202, out
        ids.append(out["task_id"])
    return ids


def cancel_a_running_task(server, client, user: str, token: str) -> str:
    """A long task submitted through the API, cancelled there once it runs: it ends
    cancelled (its id)."""
    [long] = post_tasks(server, token, 1, chunks=300, delay=0.1)
    wait_until(lambda: status(client, user, long) == "running", timeout=60,
               message="the long task running")
    code, out = server.http("DELETE", f"/tasks/{long}", token=token)
    assert code == 202, out
    assert terminal(client, user, long)["status"] == "cancelled"
    return long



def status(client, user: str, task: str) -> str | None:
    raw = client.hget(state_key(user, task), "status")
    return raw.decode() if raw else None


def replay(server, token: str, task_id: str) -> list[dict]:
    """The events a Socket.IO client subscribing now receives (the replay of the log)."""
    async def run():
        rec = Recorder(server, token)
        await rec.connect()
        try:
            assert (await rec.subscribe(task_id))["ok"]
            return rec.events(task_id)
        finally:
            await rec.close()
    return asyncio.run(run())


def test_settings_keep_celery_off_the_cluster(monkeypatch):
    from aiecs_core import ConfigurationError
    from aiecs_worker.settings import load_settings

    node, plain = "redis://127.0.0.1:7000/0", "redis://127.0.0.1:6400/0"
    s = load_settings(aiecs_redis_cluster=True, redis_url=node, celery_broker_url=plain)
    assert s.redis_target(s.state_redis_url).cluster
    assert not s.redis_target(s.celery_broker_url).cluster
    assert s.beat_redis_url == plain  # redbeat cannot use a cluster
    with pytest.raises(ConfigurationError, match="CELERY_BROKER_URL is REDIS_URL"):
        load_settings(aiecs_redis_cluster=True, redis_url=node, celery_broker_url=node)
    with pytest.raises(ConfigurationError, match="CELERY_RESULT_BACKEND is REDIS_URL"):
        load_settings(aiecs_redis_cluster=True, redis_url=node, celery_broker_url=plain,
                      celery_result_backend=node)
    with pytest.raises(ConfigurationError, match="needs REDIS_URL"):
        load_settings(aiecs_redis_cluster=True, redis_url=None, celery_broker_url=plain)
    # shards spread keys over a cluster's slots: meaningless (and refused) without one
    with pytest.raises(ConfigurationError, match="AIECS_REDIS_SHARDS is set without"):
        load_settings(aiecs_redis_shards=4, celery_broker_url=plain)
    assert load_settings(aiecs_redis_cluster=True, redis_url=node, celery_broker_url=plain,
                         aiecs_redis_shards=4).aiecs_redis_shards == 4


def users_on_every_primary(client) -> list[str]:
    """One new user whose shard is served by each primary of the cluster (in port order)."""
    found: dict[int, str] = {}
    primaries = {n.port for n in client.get_primaries()}
    while set(found) != primaries:
        user = uid("sp")
        found.setdefault(client.get_node_from_key(tag(user)).port, user)
    return [found[port] for port in sorted(found)]


def test_users_keys_and_work_spread_over_the_nodes(env, cluster, client, start_worker,
                                                   start_server, start_recorder, start_beat,
                                                   tmp_path):
    """With AIECS_REDIS_SHARDS (default 16) the users' keys sit on different nodes, each
    user's in one slot; tasks, a task due later, a schedule run by beat, a cancel, the
    pending gauge, the history recorder and forgetting a user all work across them. (With
    one hash tag for everything, every key would be on one node: the first check fails.)"""
    from aiecs_worker.server.tokens import issue_token

    users = users_on_every_primary(client)
    assert len(users) == 3
    env = {**env, "AIECS_SCHEDULE_MIN_PERIOD": "1"}
    database = f"sqlite:///{tmp_path / 'history.db'}"
    server = start_server(env["REDIS_URL"], env={**env, "AIECS_DATABASE_URL": database})
    tokens = {u: server.token(u) for u in users}
    # a worker of the heavy queue only, exporting the gauges: the fast tasks wait
    gauges = start_worker(redis_url=env["REDIS_URL"], concurrency=1, queues="heavy_tasks",
                          env={**env, "AIECS_METRICS_PORT": "0",
                               "AIECS_METRICS_HOST": "127.0.0.1"})
    ids = {u: post_tasks(server, tokens[u], 2) for u in users}
    # the PENDING records are in three shards on three nodes: the gauge sums them
    pending = {client.get_node_from_key(tag(u)).port: client.zcard(f"{tag(u)}:pending")
               for u in users}
    assert pending == {port: 2 for port in pending} and len(pending) == 3, pending
    assert total(scrape(metrics_url(gauges.log)), "aiecs_pending_executions") == 6

    start_worker(redis_url=env["REDIS_URL"], concurrency=4, env=env)
    start_recorder(redis_url=env["REDIS_URL"], env=env, database_url=database)
    # one task due in 2 s (held, then sent by a sweeper), a schedule run by beat
    code, later = server.http("POST", "/tasks", body(countdown=2), token=tokens[users[0]])
    assert code == 202, later
    code, made = server.http("POST", "/schedules", body(every=1), token=tokens[users[1]])
    assert code == 201, made
    start_beat(redis_url=env["REDIS_URL"], env=env).wait_lock()
    for user in users:
        for task in ids[user]:
            assert terminal(client, user, task)["status"] == "completed"
    assert terminal(client, users[0], later["task_id"])["status"] == "completed"

    def two_runs():
        code, view = server.http("GET", f"/tasks/{made['task_id']}", token=tokens[users[1]])
        return code == 200 and sum(s["status"] == "completed" for s in view["steps"]) >= 2

    wait_until(two_runs, timeout=60, message="two scheduled runs")
    assert server.http("DELETE", f"/schedules/{made['task_id']}",
                       token=tokens[users[1]])[0] in (200, 204)
    cancel_a_running_task(server, client, users[2], tokens[users[2]])

    # each user's keys are in its shard's slot, and the users' slots are on 3 nodes
    nodes = set()
    for user in users:
        keys = list(client.scan_iter(match=f"{tag(user)}:*{user}*",
                                     target_nodes=RedisClusterClient.ALL_NODES))
        assert len(keys) >= 6, keys
        assert {client.keyslot(k) for k in keys} == {client.keyslot(tag(user))}
        nodes.add(client.get_node_from_key(tag(user)).port)
    assert len(nodes) == 3, nodes

    # the recorder read every shard's outbox: each user's executions are in the history
    wait_until(lambda: every_shard(client, ":outbox", client.xlen) == 0, timeout=30,
               message="every outbox recorded")
    wait_until(lambda: every_shard(client, ":pending", client.zcard) == 0, timeout=30,
               message="nothing left pending")
    for user, n in zip(users, (3, 2, 3), strict=True):
        code, out = server.http("GET", "/executions?limit=50", token=tokens[user])
        assert code == 200 and len(out["items"]) >= n, (user, out)

    # forgetting a user removes its keys from its node, not the others'
    operator = issue_token("ops", server.secret, 600, scopes=("operator",))
    code, out = server.http("DELETE", f"/users/{users[0]}/history", token=operator)
    assert code == 200 and out["redis"]["tasks"] == 3, out
    assert list(client.scan_iter(match=f"{tag(users[0])}:t:{users[0]}:*",
                                 target_nodes=RedisClusterClient.ALL_NODES)) == []
    assert status(client, users[1], ids[users[1]][0]) == "completed"


def test_tasks_batch_workflow_and_cancel_on_a_cluster(env, client, start_worker, start_server,
                                                      start_recorder, tmp_path):
    start_worker(redis_url=env["REDIS_URL"], concurrency=4, env=env)
    # the history recorder reads the outbox on the cluster
    database = f"sqlite:///{tmp_path / 'history.db'}"
    start_recorder(redis_url=env["REDIS_URL"], env=env, database_url=database)
    server = start_server(env["REDIS_URL"], env={**env, "AIECS_DATABASE_URL": database})
    user = uid("cl")
    token = server.token(user)

    async def live():  # a client subscribed before the tasks run gets every event live
        rec = Recorder(server, token)
        await rec.connect()
        ids = []
        for _ in range(3):
            code, out = await asyncio.to_thread(server.http, "POST", "/tasks", body(),
                                                token=token)
            assert code == 202, out
            ids.append(out["task_id"])
            assert (await rec.subscribe(out["task_id"]))["ok"]
        await async_wait_until(lambda: all(
            (evs := rec.events(t)) and evs[-1]["type"] == "status"
            and evs[-1]["status"] in TERMINAL for t in ids), timeout=60,
            message="every terminal event, live")
        got = {t: rec.events(t) for t in ids}
        await rec.close()
        return ids, got

    ids, got = asyncio.run(live())
    for task in ids:
        logged = events(client, user, task)
        assert logged[-1]["status"] == "completed", logged[-1]
        assert [e["seq"] for e in got[task]] == [e["seq"] for e in logged]
        # a client subscribing afterwards gets the same events from the log
        assert [e["seq"] for e in replay(server, token, task)] == [e["seq"] for e in logged]
        code, view = server.http("GET", f"/tasks/{task}", token=token)
        assert code == 200 and view["steps"][0]["status"] == "completed", view

    # a batch and a workflow
    code, out = server.http("POST", "/batches", {"items": [body(), body(), body()]},
                            token=token)
    assert code == 202, out
    batch_id = out["batch_id"]
    steps = [{"step": 1, "mode": "test", "service": "echo", "operation": "echo",
              "input_data": {"text": "hello world"}},
             {"step": 2, "mode": "test", "service": "echo", "operation": "echo",
              "depends_on": [1], "input_data": {"text": {"$ref": "steps.1.result.text"}}}]
    code, out = server.http("POST", "/workflows", {"steps": steps, "task_id": "wf"},
                            token=token)
    assert code == 202, out

    def batch_done():
        code, view = server.http("GET", f"/batches/{batch_id}", token=token)
        return view if code == 200 and view["finished"] else None

    assert wait_until(batch_done, timeout=60, message="the batch")["counts"]["completed"] == 3

    def flow_done():
        code, view = server.http("GET", "/workflows/wf", token=token)
        return view if code == 200 and view["status"] != "running" else None

    view = wait_until(flow_done, timeout=60, message="the workflow")
    assert view["status"] == "completed", view
    assert [s["result"]["text"] for s in view["steps"]] == ["hello world", "hello world"]

    # a long task, cancelled through the API while it runs
    cancel_a_running_task(server, client, user, token)
    wait_until(lambda: every_shard(client, ":pending", client.zcard) == 0, timeout=20,
               message="nothing left pending")
    # the recorder wrote every finished execution to the history database
    wait_until(lambda: every_shard(client, ":outbox", client.xlen) == 0, timeout=30,
               message="the outbox recorded")
    code, out = server.http("GET", "/executions?limit=50", token=token)
    assert code == 200, out
    # 3 tasks, 3 batch items, 2 workflow steps, the cancelled one
    assert len(out["items"]) == 9, out
    # every key of the user is in its shard's slot: each script's keys are
    keys = list(client.scan_iter(match=f"{tag(user)}:*",
                                 target_nodes=RedisClusterClient.ALL_NODES))
    assert len(keys) > 20 and {client.keyslot(k) for k in keys} == {client.keyslot(tag(user))}


def test_a_dead_workers_executions_run_again(env, client, start_worker, start_server):
    """The lease and the sweeper on the cluster: a worker SIGKILLed mid-run, its
    executions run again on the other, each ends once."""
    lease = {**env, "AIECS_LEASE_SECONDS": "3"}
    doomed = start_worker(redis_url=env["REDIS_URL"], concurrency=2, env=lease)
    server = start_server(env["REDIS_URL"], env=env)
    user = uid("sw")
    token = server.token(user)
    ids = post_tasks(server, token, 2, chunks=20, delay=0.1)
    wait_until(lambda: all(status(client, user, t) == "running" for t in ids), timeout=60,
               message="both running on the doomed worker")
    os.kill(doomed.proc.pid, signal.SIGKILL)
    doomed.proc.wait(10)
    start_worker(redis_url=env["REDIS_URL"], concurrency=2, env=lease)
    for task in ids:
        assert terminal(client, user, task, timeout=120)["status"] == "completed"
        logged = events(client, user, task)
        assert sum(e["type"] == "status" and e["status"] in TERMINAL for e in logged) == 1
        assert sum(e["type"] == "status" and e["status"] == "running" for e in logged) == 2
    assert client.zcard(f"{tag(user)}:owners") >= 1


def test_a_message_lost_on_the_broker_is_queued_again(env, client, broker, start_worker,
                                                       start_server):
    """The reaper of lost messages looks for the queue on the broker (not the cluster,
    which holds no queue): the message removed from the broker by hand (the loss of a
    worker killed between kombu's pop and its unacked record) comes back from the PENDING
    record after 2 x CELERY_VISIBILITY_TIMEOUT; a message still queued does not."""
    server = start_server(env["REDIS_URL"], env=env)
    user = uid("lost")
    token = server.token(user)
    ids = post_tasks(server, token, 2)
    plain = broker.client()
    queues = [k for k in plain.keys("fast_tasks*") if plain.llen(k)]
    assert len(queues) == 1 and plain.llen(queues[0]) == 2
    plain.lpop(queues[0])  # one message is gone; only its PENDING record is left
    worker = start_worker(redis_url=env["REDIS_URL"], concurrency=2, env={
        **env, "CELERY_VISIBILITY_TIMEOUT": "2", "AIECS_LEASE_SECONDS": "3"})
    for task in ids:
        assert terminal(client, user, task)["status"] == "completed"
        logged = [e["status"] for e in events(client, user, task) if e["type"] == "status"]
        assert logged == ["pending", "running", "completed"], logged
    assert worker.log().count("its message was lost in transit; queued again") == 1
    wait_until(lambda: every_shard(client, ":pending", client.zcard) == 0, timeout=20,
               message="nothing left pending")


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiecs_worker.cli", "health", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)


def test_health_tells_a_usable_cluster_from_one_it_cannot_use(env, cluster, broker):
    ok = health(env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the state URL on a cluster, but aiecs not told: its keys would span slots
    bare = health({**env, "AIECS_REDIS_CLUSTER": "0"})
    assert bare.returncode != 0 and "AIECS_REDIS_CLUSTER" in bare.stdout + bare.stderr, bare
    # the broker on a cluster node: kombu cannot use a cluster
    on_node = health({**env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{cluster.ports[1]}/0"})
    assert on_node.returncode != 0 and "cluster" in on_node.stdout + on_node.stderr, on_node


@pytest.mark.faults
def test_the_primary_of_a_users_shard_killed_mid_run(broker, start_worker, start_server):
    """A cluster with a replica per primary; the primary serving the user's shard is
    SIGKILLed while executions run; its replica is promoted and every execution ends
    exactly once (asynchronous replication may lose the last writes: an execution may run
    again, never end twice)."""
    nodes = RedisCluster(replicas=1).start()
    try:
        user = uid("fo")
        doomed = nodes.primary_of(tag(user))
        # the URL (and the pub/sub node) is another primary's
        other = next(p for p in nodes.ports if p != doomed)
        url = f"redis://127.0.0.1:{other}/0"
        env = {"CELERY_BROKER_URL": broker.url, "REDIS_URL": url, "AIECS_REDIS_CLUSTER": "1",
               "AIECS_LEASE_SECONDS": "6"}
        start_worker(redis_url=url, concurrency=8, env=env)
        server = start_server(url, env=env)
        token = server.token(user)
        ids = post_tasks(server, token, 40, chunks=10, delay=0.2)
        client = nodes.client()
        wait_until(lambda: sum(status(client, user, t) == "completed" for t in ids) >= 5,
                   timeout=60, message="some executions done")
        client.close()
        nodes.kill(doomed)
        nodes.wait_promoted(tag(user), doomed)
        client = nodes.client()
        for task in ids:
            logged = wait_until(
                lambda t=task: (evs := [e for e in events(client, user, t)
                                        if e["type"] == "status"])
                and evs[-1]["status"] in TERMINAL and evs, timeout=180,
                message=f"{task} ended")
            ends = [e["status"] for e in logged if e["status"] in TERMINAL]
            assert ends == ["completed"], (task, ends)
        client.close()
    finally:
        nodes.close()


def test_pubsub_nodes_move_on_round_the_cluster():
    from aiecs_worker.settings import RedisTarget
    from aiecs_worker.store.connection import PubSubNodes

    nodes = PubSubNodes(RedisTarget(url="redis://:pw@10.0.0.2:7001/0", cluster=True),
                        lambda: [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)])
    # the URL's node first, then the next one at each reconnection, round the list
    assert [nodes.url() for _ in range(4)] == [
        "redis://:pw@10.0.0.2:7001/0", "redis://:pw@10.0.0.3:7002/0",
        "redis://:pw@10.0.0.1:7000/0", "redis://:pw@10.0.0.2:7001/0"]
    lone = PubSubNodes(RedisTarget(url="redis://10.0.0.2:7001/0", cluster=True))
    assert lone.url() == lone.url() == "redis://10.0.0.2:7001/0"  # nothing else known yet


def test_events_and_cancels_outlive_the_url_node(broker, start_worker, start_server):
    """The node REDIS_URL names (a replica here, so the cluster keeps every slot) is
    SIGKILLed: the server's event subscriber moves to another node of the cluster (live
    events still reach a Socket.IO client), and cancel broadcasts, on AIECS_PUBSUB_URL
    (the broker's Redis), still reach the worker."""
    import redis
    from aiecs_worker.store.events import celery_task_id

    nodes = RedisCluster(replicas=1).start()
    try:
        doomed = next(p for p in nodes.ports
                      if redis.Redis(port=p).info("replication")["role"] == "slave")
        url = f"redis://127.0.0.1:{doomed}/0"
        env = {"CELERY_BROKER_URL": broker.url, "REDIS_URL": url, "AIECS_REDIS_CLUSTER": "1",
               "AIECS_PUBSUB_URL": broker.url}
        start_worker(redis_url=url, concurrency=2, env=env)
        server = start_server(url, env=env)
        user = uid("node")
        token = server.token(user)
        plain = broker.client()
        # the worker follows cancels on the pub/sub Redis, not on the cluster
        wait_until(lambda: plain.pubsub_numsub(f"{PREFIX}:cancel")[0][1] >= 1, timeout=30,
                   message="the cancel listener on AIECS_PUBSUB_URL")
        nodes.kill(doomed)
        killed = time.monotonic()

        def probed_since_kill():
            code, health = server.health()
            age = health.get("pubsub_last_probe_age")
            return (code == 200 and health["pubsub_listener"] and age is not None
                    and age < time.monotonic() - killed)

        wait_until(probed_since_kill, timeout=60, message="the listener on another node")
        client = nodes.client()

        async def live():
            rec = Recorder(server, token)
            await rec.connect()
            code, out = await asyncio.to_thread(server.http, "POST", "/tasks",
                                                body(chunks=10, delay=0.1), token=token)
            assert code == 202, out
            task = out["task_id"]
            assert (await rec.subscribe(task))["ok"]
            await async_wait_until(lambda: any(
                name == "task_event" and e["task_id"] == task and e["type"] == "status"
                and e["status"] in TERMINAL for name, e in rec.raw), timeout=60,
                message="the terminal event, live")
            await rec.close()
            return task, [e for name, e in rec.raw if name == "task_event"]

        task, got = asyncio.run(live())
        assert got[-1]["status"] == "completed"
        assert [e["seq"] for e in events(client, user, task)][-len(got):] == [
            e["seq"] for e in got]

        # a cancel, broadcast on the broker's Redis, reaches the running execution
        listener = plain.pubsub()
        listener.subscribe(f"{PREFIX}:cancel")
        long = cancel_a_running_task(server, client, user, token)
        heard = wait_until(lambda: listener.get_message(ignore_subscribe_messages=True,
                                                        timeout=0.5), timeout=10,
                           message="the cancel broadcast on AIECS_PUBSUB_URL")
        assert heard["data"].decode() == celery_task_id(user, long, 1)
        listener.close()
        client.close()
    finally:
        nodes.close()


def test_a_users_shard_is_stable():
    """A user's shard is CRC-32 of its id modulo the count: the same in every process and
    release (a change would move users to shards no process reads: a migration)."""
    assert [shard_number(u, 16) for u in ("alice", "bob", "carol")] == [
        zlib.crc32(u.encode()) % 16 for u in ("alice", "bob", "carol")] == [7, 0, 3]
    assert shard_tag(7, 16) == "{aiecs-7}" and shard_tag(0, 1) == "{aiecs}"
