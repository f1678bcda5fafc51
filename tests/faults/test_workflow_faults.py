"""Workflows under SIGKILLed workers: every step of every workflow ends exactly once, and
no step starts before its dependencies completed. Marked ``faults`` (about a minute per
pool): ``uv run pytest -m faults tests/faults/test_workflow_faults.py``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.harness import CONCURRENCY, POOLS
from tests.support.events import TERMINAL, read_events, wait_until
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

USER = "fault"
FLOWS = int(os.environ.get("AIECS_FAULT_FLOWS", "12"))


def diamond(i: int) -> list[dict]:
    """1 -> (2, 3) -> 4, echo steps of 0.2-0.8 s; step 4 takes values from 2 and 3."""
    def step(n, deps=(), **inp):
        inp.setdefault("text", f"flow {i} step {n}")
        return {"step": n, "mode": "test", "service": "echo", "task_name": "echo",
                "depends_on": list(deps), "input_data": {"chunks": 2, **inp}}
    d = 0.2 + (i % 4) * 0.2
    return [step(1, delay=d / 2), step(2, [1], delay=d / 2), step(3, [1], delay=d / 4),
            step(4, [2, 3], text={"$ref": "steps.2.result.text"}, delay=d / 2,
                 chunks={"$ref": "steps.3.result.chunks"})]


def check(client, task_ids: list[str]) -> list[str]:
    """What went wrong: steps without exactly one terminal event, not COMPLETED, or that
    started before a dependency completed."""
    wrong = []
    deps = {1: [], 2: [1], 3: [1], 4: [2, 3]}
    for t in task_ids:
        events = read_events(client, USER, t)
        done_at = {}
        for n in deps:
            terminals = [e for e in events if e["step"] == n and e["type"] == "status"
                         and e["status"] in TERMINAL]
            state = client.hget(f"aiecs:t:{USER}:{t}:{n}:state", "status")
            if len(terminals) != 1 or terminals[0]["status"] != "completed" \
                    or state != b"completed":
                wrong.append(f"{t} step {n}: state {state}, terminal events "
                             f"{[e['status'] for e in terminals]}")
            elif terminals:
                done_at[n] = terminals[0]["seq"]
        for n, ds in deps.items():
            for e in events:
                if e["step"] == n and e["status"] == "running" and e["type"] == "status" \
                        and any(d not in done_at or e["seq"] < done_at[d] for d in ds):
                    wrong.append(f"{t} step {n} started before its dependencies completed")
    return wrong


@pytest.mark.parametrize("pool", POOLS)
def test_workflows_survive_sigkilled_workers(start_worker, pool):
    """Kill the worker's main process twice while workflows run (each time a replacement
    starts, as a supervisor would). Default lease; CELERY_VISIBILITY_TIMEOUT is 20 s (as
    in the crashing-operation run) so that a released step whose message the killed
    worker had received but not started comes back within the test (see lease.py)."""
    redis = RedisServer().start()
    try:
        env = {"CELERY_BROKER_URL": redis.url, "REDIS_URL": redis.url}
        wenv = {"CELERY_VISIBILITY_TIMEOUT": "20"}
        first = start_worker(redis_url=redis.url, pool=pool, concurrency=CONCURRENCY[pool],
                             env=wenv)
        import subprocess
        import sys

        script = (
            "import json, sys\n"
            "from aiecs_worker.producer.flow import submit_workflow\n"
            "for t, steps in json.load(sys.stdin):\n"
            "    submit_workflow('fault', steps, task_id=t)\n")
        flows = [(f"wf{i}", diamond(i)) for i in range(FLOWS)]
        import json

        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", script], input=json.dumps(flows), text=True,
                       env=dict(os.environ, **env), check=True, timeout=120)
        client = redis.client()
        victim = first
        for _ in range(2):
            wait_until(lambda: client.exists(b"aiecs:owners") and any(
                client.hget(f"aiecs:t:{USER}:{t}:{n}:state", "status") == b"running"
                for t, _ in flows for n in (1, 2, 3, 4)), timeout=60)
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(10)
            victim = start_worker(redis_url=redis.url, pool=pool,
                                  concurrency=CONCURRENCY[pool], env=wenv)
        ids = [t for t, _ in flows]

        def all_ended():
            pipe = client.pipeline()
            for t in ids:
                for n in (1, 2, 3, 4):
                    pipe.hget(f"aiecs:t:{USER}:{t}:{n}:state", "status")
            return all(s and s.decode() in TERMINAL for s in pipe.execute())

        try:
            wait_until(all_ended, timeout=float(os.environ.get("AIECS_FAULT_SETTLE", "240")),
                       interval=0.25, message="every step to end")
        except AssertionError:
            for t in ids:
                for n in (1, 2, 3, 4):
                    h = client.hgetall(f"aiecs:t:{USER}:{t}:{n}:state")
                    if h.get(b"status", b"").decode() not in TERMINAL:
                        print(t, n, {k: v for k, v in h.items() if k != b"request"})
            print(client.zrange("aiecs:flows:due", 0, -1, withscores=True))
            raise
        wrong = check(client, ids)
        print(f"{pool}: {FLOWS} workflows x 4 steps after 2 SIGKILLs: "
              f"{time.monotonic() - t0:.1f} s, problems: {len(wrong)}")
        assert wrong == []
    finally:
        redis.close()
