"""Bytes per task in Redis, by kind of key, measured with ``MEMORY USAGE`` (issue 19,
item 3: the sizing formula of docs/operations.md, "Retention and sizing").

Runs its own redis-server and one threads worker, submits ``--tasks`` echo executions
(``--chunks`` progress events each, a ``--text`` result) from this process, waits until
every one ended, then sums ``MEMORY USAGE key SAMPLES 0`` over every aiecs key (and
Celery's result keys) by kind, and the growth of ``used_memory``, both divided by the
number of tasks. Results: ``bench/results/retention-{chunks}-chunks.json`` and stdout.

    uv run python -m bench.retention --tasks 1000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from .procs import AIECS_APP, Redis, Worker, cleanup, install_signal_handlers

RESULTS = Path(__file__).resolve().parent / "results"

#: kind of key, by pattern (first match wins)
KINDS = [
    ("state (per step)", re.compile(r"^aiecs:t:.+:\d+:state$")),
    ("log (per task)", re.compile(r"^aiecs:t:.+:log$")),
    ("seq (per task)", re.compile(r"^aiecs:t:.+:seq$")),
    ("steps (per task)", re.compile(r"^aiecs:t:.+:steps$")),
    ("celery index (per step)", re.compile(r"^aiecs:celery:")),
    ("Celery result (per step)", re.compile(r"^celery-task-meta-")),
]


def kind_of(key: str) -> str:
    return next((name for name, pattern in KINDS if pattern.match(key)), "other")


def submit(redis_url: str, n: int, chunks: int, text: str) -> None:
    code = f"""
from aiecs_worker import execute_task
for i in range({n}):
    execute_task.delay(task_name="echo", user_id="bench-user", task_id=f"task-{{i:06d}}",
                       step=1, mode="test", service="echo",
                       input_data={{"text": {text!r}, "chunks": {chunks}}}, context={{}})
"""
    env = dict(os.environ, CELERY_BROKER_URL=redis_url, REDIS_URL=redis_url,
               AIECS_TEST_SERVICES="1")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=4, help="progress events per task")
    parser.add_argument("--text", default="one two three four five six seven eight",
                        help="the echoed input (and result)")
    args = parser.parse_args(argv)
    install_signal_handlers()
    redis = Redis().start()
    worker = Worker(AIECS_APP, redis.url, env={"AIECS_TEST_SERVICES": "1"})
    try:
        client = redis.client
        base = client.info("memory")["used_memory"]
        worker.start()
        submit(redis.url, args.tasks, args.chunks, args.text)
        deadline = time.monotonic() + 600
        while True:
            done = sum(1 for k in client.scan_iter("aiecs:t:*:state", count=1000)
                       if client.hget(k, "status") in (b"completed", b"failed"))
            if done >= args.tasks:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {args.tasks} ended:\n{worker.tail()}")
            time.sleep(0.5)
        worker.close()  # its lease and owner keys are not per task
        by_kind: dict[str, int] = defaultdict(int)
        ttls: dict[str, int] = {}
        for key in client.scan_iter(count=1000):
            name = key.decode(errors="replace")
            kind = kind_of(name)
            by_kind[kind] += client.memory_usage(key, samples=0) or 0
            ttls.setdefault(kind, client.ttl(key))
        used = client.info("memory")["used_memory"] - base
        per_task = {k: round(v / args.tasks) for k, v in sorted(by_kind.items())}
        out = {"tasks": args.tasks, "chunks": args.chunks, "text_bytes": len(args.text),
               "bytes_per_task_by_kind": per_task,
               "bytes_per_task_keys": sum(v for k, v in per_task.items() if k != "other"),
               "used_memory_growth_per_task": round(used / args.tasks),
               "ttl_seen_by_kind": ttls,
               "redis": client.info("server")["redis_version"]}
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"retention-{args.chunks}-chunks.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(out, indent=2))
    finally:
        worker.close()
        redis.close()
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
