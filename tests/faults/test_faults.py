"""The fault suite: real Redis, real workers, real faults, DEFAULT settings unless named.

Each run submits echo tasks through the public API from a client process, injects one
fault while they run, and counts from Redis what became of every execution: completed
exactly once, lost, duplicated (more than one terminal event) or stuck (no terminal
state). Marked ``faults``: ``uv run pytest -m faults`` (``.ci/run`` runs it after the main
suite). Counts land in ``test-output/faults/results.jsonl``; docs/reliability.md has the
table (``python -m tests.faults.harness`` renders its rows).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.harness import CONCURRENCY, POOLS, FaultRun
from tests.support.events import wait_until
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

N = int(os.environ.get("AIECS_FAULT_N", "40"))
#: on RabbitMQ --pool asyncio is the threads pool (it leaves AMQP queues to Celery)
RABBIT_POOLS = ["threads", "prefork"]


@pytest.fixture
def fault_redis():
    """Factory of private redis-servers (``aof=True`` for an append-only one)."""
    servers: list[RedisServer] = []

    def make(aof: bool = False) -> RedisServer:
        server = RedisServer(aof=aof).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)  # a test that failed mid-pause
        server.close()


@pytest.fixture
def fault_worker(start_worker):
    """``fault_worker(redis, pool, **env)``: a worker of the recommended size for ``pool``."""
    def start(redis: RedisServer, pool: str, **env: str):
        return start_worker(redis_url=redis.url, pool=pool, concurrency=CONCURRENCY[pool],
                            env=env)
    return start


def _scenario(name, redis, fault, *, n=N, settle=180.0, broker_url=None, **send):
    """Submit ``n`` executions, wait until some run, inject ``fault()``, let all settle,
    and return the tally: the run passes when every execution ended exactly once, as
    its input asked. ``broker_url``: a broker other than ``redis`` (RabbitMQ)."""
    run = FaultRun(redis, n, broker_url=broker_url)
    t0 = time.monotonic()
    run.send(delay=(0.25, 1.0), chunks=2, **send)
    run.wait_started(4)
    fault()
    run.settle(timeout=settle)
    tally = run.tally(name, time.monotonic() - t0)
    assert tally.ok, f"{tally.row()}\n" + "\n".join(tally.details[:20])
    assert tally.completed_once + tally.failed_as_asked == tally.sent
    return tally


@pytest.mark.parametrize("pool", POOLS)
def test_worker_main_process_sigkilled(fault_redis, fault_worker, pool):
    """The worker's main process dies mid-run (default settings). Its executions are
    noticed through their lease and run again by the worker that replaces it: within
    about AIECS_LEASE_SECONDS (30 s), not the visibility timeout."""
    redis = fault_redis()
    first = fault_worker(redis, pool)

    def kill_and_replace():
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        fault_worker(redis, pool)  # the supervisor's replacement

    tally = _scenario(f"worker main SIGKILL ({pool})", redis, kill_and_replace)
    assert tally.reruns >= 1  # the killed worker's executions did run again


@pytest.mark.parametrize("pool", POOLS)
def test_worker_sigterm_then_replacement(fault_redis, fault_worker, pool):
    """A warm shutdown (SIGTERM) finishes what runs; a new worker takes the rest."""
    redis = fault_redis()
    first = fault_worker(redis, pool)

    def stop_and_replace():
        os.kill(first.proc.pid, signal.SIGTERM)
        first.proc.wait(60)
        fault_worker(redis, pool)

    _scenario(f"worker SIGTERM ({pool})", redis, stop_and_replace)


@pytest.mark.parametrize("pool", POOLS)
def test_redis_paused(fault_redis, fault_worker, pool):
    """Redis stops answering for 20 s (SIGSTOP/SIGCONT) while executions run."""
    redis = fault_redis()
    worker = fault_worker(redis, pool)
    _scenario(f"Redis paused 20 s ({pool})", redis, lambda: redis.pause(20))
    assert worker.alive()


def _restart(redis: RedisServer) -> None:
    redis.stop()
    time.sleep(1.0)  # the fault itself: Redis is gone for a second
    redis.start()


@pytest.mark.parametrize("pool", POOLS)
def test_redis_restarted_with_aof(fault_redis, fault_worker, pool):
    """Redis (AOF, fsync always) is killed and restarted while executions run: the worker
    survives, reconnects by itself, and every execution ends exactly once."""
    redis = fault_redis(aof=True)
    worker = fault_worker(redis, pool)
    _scenario(f"Redis restarted, AOF ({pool})", redis, lambda: _restart(redis))
    assert worker.alive()


@pytest.mark.parametrize("pool", POOLS)
def test_redis_restarted_without_persistence(fault_redis, fault_worker, pool):
    """Redis without persistence restarts empty: queued messages are gone with it (the
    broker's loss), but every execution that had started still ends exactly once, and the
    worker takes new work by itself."""
    redis = fault_redis()
    worker = fault_worker(redis, pool)
    run = FaultRun(redis, N)
    t0 = time.monotonic()
    run.send(delay=(0.25, 1.0), chunks=2)
    run.wait_started(4)
    client = redis.client()
    running = [t for t in run.ids
               if client.hget(f"aiecs:t:fault:{t}:1:state", "status") == b"running"]
    client.close()
    _restart(redis)
    after = FaultRun(redis, 4)
    after.send()
    after.settle(timeout=120)
    assert after.tally(f"after empty Redis restart ({pool})", 0).completed_once == 4
    started = FaultRun(redis, 0, ids=running)
    started.settle(timeout=120)
    tally = started.tally(f"Redis restarted empty, started executions ({pool})",
                          time.monotonic() - t0, require_running=False)
    assert running
    assert tally.ok, f"{tally.row()}\n" + "\n".join(tally.details[:20])
    assert worker.alive()


# --pool asyncio takes its first message once the worker is ready (before that fix a
# restarted worker took the crashing operation during start-up and died with it there).
@pytest.mark.parametrize("pool", POOLS)
def test_crashing_operation_spares_innocent_executions(fault_redis, fault_worker, pool):
    """One operation kills its process each time it runs (SIGKILL), 20 innocent
    executions beside it. The poison ends FAILED (WorkerLostError) once it has crashed
    AIECS_MAX_DELIVERIES times in isolation; every innocent ends COMPLETED. A supervisor
    restarts the worker whenever it dies (threads: the whole process dies)."""
    redis = fault_redis()
    # Shorter than the defaults only to make the run shorter: the lease (30 s) brings back
    # what crashed while running, the visibility timeout (300 s) what a dead worker had
    # received but not started.
    env = {"AIECS_LEASE_SECONDS": "6", "CELERY_VISIBILITY_TIMEOUT": "20"}
    current = [fault_worker(redis, pool, **env)]
    run = FaultRun(redis, 21)
    t0 = time.monotonic()
    run.send(delay=(0.3, 1.0), poison=1)

    def settled():
        if not current[0].alive():
            current[0] = fault_worker(redis, pool, **env)
        return run.terminal_count() == len(run.ids)

    wait_until(settled, timeout=300, interval=0.25, message="every execution terminal")
    tally = run.tally(f"crashing operation + 20 innocent ({pool})", time.monotonic() - t0)
    assert tally.ok, f"{tally.row()}\n" + "\n".join(tally.details[:20])
    (poison,) = run.expect_failed
    state = redis.client().hgetall(f"aiecs:t:fault:{poison}:1:state")
    assert b"WorkerLostError" in state[b"error"]


@pytest.mark.parametrize("pool", RABBIT_POOLS)
def test_worker_main_process_sigkilled_on_rabbitmq(fault_redis, fault_worker, rabbit_vhost,
                                                   pool):
    """The same kill with RabbitMQ as broker (a private vhost of the machine's server;
    state and events in Redis). RabbitMQ has no visibility timeout: the dead worker's
    unacknowledged messages return to the queue as its connection closes, and the
    replacement takes their executions over at once (their holder is dead on this host)
    or the lease sweeper queues them again; each ends exactly once."""
    redis = fault_redis()
    amqp = {"CELERY_BROKER_URL": rabbit_vhost.url}
    first = fault_worker(redis, pool, **amqp)

    def kill_and_replace():
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        fault_worker(redis, pool, **amqp)

    tally = _scenario(f"worker main SIGKILL, RabbitMQ ({pool})", redis, kill_and_replace,
                      broker_url=rabbit_vhost.url)
    assert tally.reruns >= 1


@pytest.mark.parametrize("pool", RABBIT_POOLS)
def test_rabbitmq_connections_closed(fault_redis, fault_worker, rabbit_vhost, pool):
    """RabbitMQ closes every connection of the workers while executions run (what a
    RabbitMQ restart looks like to them): the running executions' messages go back to the
    queue; their redeliveries find them held by a live worker and are dropped, the workers
    reconnect by themselves, and every execution ends exactly once."""
    redis = fault_redis()
    worker = fault_worker(redis, pool, CELERY_BROKER_URL=rabbit_vhost.url)
    _scenario(f"RabbitMQ connections closed ({pool})", redis, rabbit_vhost.close_connections,
              broker_url=rabbit_vhost.url)
    assert worker.alive()

