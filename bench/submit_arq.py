"""The arq producer of a run (runs in bench/arq_env's interpreter): as bench/submit.py
does for Celery, it warms the workers up, says ``ready``, waits for ``go``, enqueues ``n``
jobs one ``enqueue_job`` at a time and waits for every result (``Job.result``, polling
every 20 ms). With ``"wait": false`` it only enqueues (the submission-rate scenario).

    bench/arq_env/.venv/bin/python -m bench.submit_arq '{"kind": "chat", "n": 3000}'
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from .procs import child_io, cpu_self

MODEL = {"model": "bench-model", "messages": [{"role": "user", "content": "hello"}]}


async def run(cfg: dict) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    ready, wait, result = child_io()
    pool = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]))
    name, kwargs = ("chat", MODEL) if cfg.get("kind") == "chat" else ("noop", {"text": "hi"})
    warm = [await pool.enqueue_job(name, **kwargs) for _ in range(cfg.get("warm", 4))]
    for job in warm if cfg.get("wait", True) else []:  # no worker: only the submissions warm
        await job.result(timeout=120, poll_delay=0.02)
    ready()
    await asyncio.get_running_loop().run_in_executor(None, wait)
    n = cfg["n"]
    cpu0, t0 = cpu_self(), time.perf_counter()
    jobs = [await pool.enqueue_job(name, **kwargs) for _ in range(n)]
    t1 = time.perf_counter()
    failed = 0
    if cfg.get("wait", True):
        deadline = time.monotonic() + cfg.get("timeout", max(180, n // 10))
        for job in jobs:
            try:
                await job.result(timeout=max(0.01, deadline - time.monotonic()),
                                 poll_delay=0.02)
            except Exception:  # noqa: BLE001 - counted and reported, the run goes on
                failed += 1
    t2 = time.perf_counter()
    result({"tasks": n, "failed": failed, "submit_s": t1 - t0, "seconds": t2 - t0,
            "per_s": n / (t2 - t0), "client_cpu": cpu_self() - cpu0})
    await pool.aclose()


if __name__ == "__main__":
    import uvloop

    uvloop.run(run(json.loads(sys.argv[1])))
