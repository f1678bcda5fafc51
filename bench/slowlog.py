"""Redis time per task, by command and by Lua script: what each guarantee costs in Redis.

``uv run python -m bench.slowlog [--tasks 1000] [--pool threads]``: a fresh redis-server
logs every command it runs (``slowlog-log-slower-than 0``), a real aiecs worker drains
echo no-ops (the ``noop`` scenario's task: PENDING, RUNNING, a stream delta, a progress
event, COMPLETED) submitted with ``execute_task.delay`` and collected with ``.get()``
from this process, and the log is grouped: each ``EVALSHA`` under the name of the aiecs
script it runs (found by hashing every ``*_LUA`` of aiecs_worker's store and runner), every
other command under its own name. Out: calls per task, µs per call and µs per task, as
Redis measured them (the time inside Redis of one call: a script's includes its inner
commands; network and client time not included). Not a throughput run: logging every
command costs Redis time of its own, so compare rows with each other, not with a drain.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib
import os
import pkgutil
import time

from .procs import AIECS_APP, Redis, Worker, cleanup


def _script_names() -> dict[str, str]:
    """SHA1 -> ``module.NAME`` of every Lua script constant aiecs_worker's store and runner
    define."""
    import aiecs_worker.runner
    import aiecs_worker.store

    names: dict[str, str] = {}
    for pkg in (aiecs_worker.store, aiecs_worker.runner):
        for info in pkgutil.iter_modules(pkg.__path__):
            try:
                mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
            except Exception:  # noqa: BLE001, S112 - a module that needs more set-up
                continue
            for attr, value in vars(mod).items():
                if attr.endswith("_LUA") and isinstance(value, str) and "redis.call" in value:
                    sha = hashlib.sha1(value.encode()).hexdigest()  # noqa: S324
                    names.setdefault(sha, f"{info.name}.{attr}")
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.slowlog", description=__doc__)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--pool", default="threads")
    args = ap.parse_args(argv)
    redis = Redis().start()
    try:
        os.environ.update(CELERY_BROKER_URL=redis.url, REDIS_URL=redis.url,
                          AIECS_TEST_SERVICES="1")
        from aiecs_worker import execute_task

        worker = Worker(AIECS_APP, redis.url, args.pool, 8).start()

        def drain(n: int, tag: str) -> None:
            results = [execute_task.delay(task_name="echo", user_id=f"u{i % 20}",
                                          task_id=f"{tag}{i}", step=1, mode="test",
                                          service="echo",
                                          input_data={"text": "hello world", "chunks": 1},
                                          context={}) for i in range(n)]
            for r in results:
                r.get(timeout=300)

        drain(50, "warm")  # scripts loaded, clients connected
        client = redis.client
        client.config_set("slowlog-max-len", args.tasks * 200)
        client.config_set("slowlog-log-slower-than", 0)
        client.slowlog_reset()
        started = time.monotonic()
        drain(args.tasks, "t")
        seconds = time.monotonic() - started
        client.config_set("slowlog-log-slower-than", 10_000)
        entries = client.slowlog_get(args.tasks * 200)
        worker.close()
    finally:
        cleanup()
    names = _script_names()
    calls: collections.Counter[str] = collections.Counter()
    usec: collections.Counter[str] = collections.Counter()
    for e in entries:
        parts = e["command"].split() if isinstance(e["command"], str) else \
            e["command"].decode(errors="replace").split()
        if not parts:
            continue
        cmd = parts[0].lower()
        if cmd in ("slowlog", "config"):
            continue
        if cmd == "evalsha" and len(parts) > 1:
            cmd = "EVALSHA " + names.get(parts[1].lower(), parts[1][:10])
        calls[cmd] += 1
        usec[cmd] += e["duration"]
    n = args.tasks
    print(f"{n} echo no-ops, {args.pool} -c8, {seconds:.1f} s; Redis µs per task in all: "
          f"{sum(usec.values()) / n:.1f}")
    print("| command or script | calls per task | µs per call | µs per task |")
    print("|---|---:|---:|---:|")
    for cmd, total in usec.most_common():
        print(f"| `{cmd}` | {calls[cmd] / n:.2f} | {total / calls[cmd]:.1f} | {total / n:.1f} |")


if __name__ == "__main__":
    main()
