"""History benchmarks (issue 18): what the outbox and the recorder cost, and how fast the
recorder writes.

    uv run python -m bench.history            # full: bench/results/history-<time>.json
    uv run python -m bench.history --quick    # smaller sizes (~3 min)

- ``overhead``: the no-op drain (threads -c8) and the chat drain (threads -c200) with
  history off (``AIECS_HISTORY=0``) and on (the outbox, plus an ``aiecs recorder`` on
  SQLite whose CPU is counted until it has recorded every task): CPU per task all-in and
  Redis commands per task (bench.throughput.drain);
- ``rate``: recorder rows/s on SQLite and PostgreSQL: N finished executions (real
  terminal script, a chat-sized request and result, five events each) appended to the
  outbox while one ``aiecs recorder`` drains it; timed from the first append to the last
  row;
- ``latency``: terminal event -> queryable: executions finished at a steady rate while a
  recorder runs; a reader polls the database every 10 ms and takes, per row, the time from
  its ``finished_at`` to when it first saw it (p50 / p99 / max);
- ``bytes``: bytes per history row (the execution row with its indexes, and its event log),
  on both databases, after the rate run.

PostgreSQL is a private server started here (initdb on a free port, fsync on: durable
commits, as in production).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from . import procs
from .procs import AIECS_APP, Redis, base_env, spawn, stop, tmpdir
from .throughput import drain

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"full": {"repeats": 3, "noop": 2000, "chat": 2000, "rate": 20_000, "latency_s": 20,
                  "rate_per_s": 200},
         "quick": {"repeats": 1, "noop": 500, "chat": 500, "rate": 5000, "latency_s": 8,
                   "rate_per_s": 200}}


def _median(runs: list[dict]) -> dict:
    keys = {k for r in runs for k, v in r.items() if isinstance(v, int | float)}
    return {k: statistics.median(r[k] for r in runs if isinstance(r.get(k), int | float))
            for k in sorted(keys)}


# -- overhead --------------------------------------------------------------------------------
def overhead(size: dict, log) -> dict:
    out = {}
    drains = {"noop": ("noop threads -c8", {"n": size["noop"]}),
              "chat": ("chat threads -c200", {"n": size["chat"], "kind": "chat",
                                              "concurrency": 200})}
    for name, kw in (drains[k] for k in size.get("scenarios", drains)):
        runs: dict[str, list] = {"off": [], "on": []}
        for r in range(size["repeats"]):
            for variant in (["off", "on"] if r % 2 == 0 else ["on", "off"]):
                db = f"sqlite:///{tmpdir('hist')}/h.db"
                res = drain(AIECS_APP, **kw,
                            extra_env={"AIECS_HISTORY": "0" if variant == "off" else "1"},
                            recorder=db if variant == "on" else None)
                runs[variant].append(res)
                log(f"  {name} {variant}: cpu_ms={res['cpu_ms']:.3f} "
                    f"commands={res['commands']:.1f} per_s={res['per_s']:.0f} "
                    f"recorder_cpu_ms={res.get('recorder_cpu_ms', 0):.3f}")
        med = {k: _median(v) for k, v in runs.items()}
        med["added_cpu_pct"] = 100 * (med["on"]["cpu_ms"] / med["off"]["cpu_ms"] - 1)
        med["added_commands"] = med["on"]["commands"] - med["off"]["commands"]
        out[name] = {"runs": runs, "median": med}
    return out


# -- synthetic finished executions through the real terminal script ---------------------------
def _finisher(redis_url: str):
    """finish(n, prefix): n executions recorded PENDING->RUNNING with events, then ended by
    the terminal script (pipelined), as a chat task ends."""
    import redis as redis_lib
    from aiecs_core import TaskEvent, TaskStatus
    from aiecs_worker.store.events import (
        FINISH_PUBLISH_LUA,
        PUBLISH_LUA,
        TaskKeys,
        finish_args,
        script_args,
    )
    from aiecs_worker.store.records import terminal_fields

    client = redis_lib.Redis.from_url(redis_url)
    pub, fin = client.register_script(PUBLISH_LUA), client.register_script(FINISH_PUBLISH_LUA)
    pub.sha = client.script_load(PUBLISH_LUA)
    fin.sha = client.script_load(FINISH_PUBLISH_LUA)
    request = {"task_name": "chat", "user_id": "bench", "task_id": "", "step": 1,
               "mode": "llm", "service": "openai",
               "input_data": {"model": "gpt-4o-mini", "messages": [
                   {"role": "system", "content": "You are a helpful assistant."},
                   {"role": "user", "content": "Summarize: " + "lorem ipsum " * 20}]},
               "context": {}}
    usage = [{"provider": "openai", "model": "gpt-4o-mini-2024-07-18", "input_tokens": 62,
              "output_tokens": 40, "cached_tokens": 0, "reasoning_tokens": 0,
              "cost": 0.0000333, "estimated": False}]
    result = {"result": {"text": "word " * 40, "model": "gpt-4o-mini-2024-07-18",
                         "finish_reason": "stop"}, "usage": usage}
    meta = {"worker": "bench-host", "plugin": "aiecs-providers-openai",
            "plugin_version": "0.1.0", "price_version": "0123456789ab"}

    def ev(task_id, type_, status, **kw):
        return TaskEvent(type=type_, task_id=task_id, step=1, user_id="bench",
                         task_name="chat", status=status, **kw)

    def finish(n: int, prefix: str) -> None:
        with client.pipeline(transaction=False) as p:
            for i in range(n):
                task_id = f"{prefix}{i}"
                state = TaskKeys("bench", task_id).state(1)
                now = time.time()
                p.hset(state, mapping={
                    "status": "running", "celery_id": str(uuid.uuid4()), "user_id": "bench",
                    "task_name": "chat", "step": 1, "submitted": now - 0.3,
                    "started": now - 0.25, "updated": now, "deliveries": 1,
                    "queue": "fast_tasks", "task": "aiecs.tasks.worker.execute_task",
                    "owner": f"bench-host:1:{i}",
                    "request": json.dumps({**request, "task_id": task_id})})
                for e in (ev(task_id, "status", TaskStatus.PENDING),
                          ev(task_id, "status", TaskStatus.RUNNING),
                          ev(task_id, "stream", TaskStatus.RUNNING, delta="word " * 20),
                          ev(task_id, "stream", TaskStatus.RUNNING, delta="word " * 20)):
                    k, a = script_args(e, "socketio", 10_000, 3600)
                    p.evalsha(pub.sha, len(k), *k, *a)
                k, a = script_args(ev(task_id, "status", TaskStatus.COMPLETED, usage=usage),
                                   "socketio", 10_000, 3600)
                k, a = finish_args(k, a, state, terminal_fields(
                    TaskStatus.COMPLETED, 3600, result=result, usage=usage, meta=meta))
                p.evalsha(fin.sha, len(k), *k, *a)
            p.execute()

    return client, finish


def _recorder(db_url: str, redis_url: str) -> tuple:
    log = tmpdir("recorder") / "recorder.log"
    proc = spawn([sys.executable, "-m", "aiecs_worker.cli", "recorder", "--database-url",
                  db_url], env=base_env(CELERY_BROKER_URL=redis_url, REDIS_URL=redis_url),
                 log=log)
    deadline = time.monotonic() + 60
    while b"recording into" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("recorder did not start:\n" + log.read_text()[-2000:])
        time.sleep(0.05)
    return proc, log


def _engine(url: str):
    from aiecs_history import db

    return db.connect(url)


def _count(engine) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM executions")).scalar()


def rate(db_url: str, n: int, recorders: int = 1) -> dict:
    redis = Redis().start()
    recs: list = []
    rec = None
    try:
        client, finish = _finisher(redis.url)
        t0 = time.monotonic()
        for start in range(0, n, 500):  # the backlog first (the bench's client is slower
            finish(min(500, n - start), f"r{start}.")  # than the recorder)
        filled = time.monotonic() - t0
        outbox_bytes = client.memory_usage("aiecs:outbox", samples=0)
        # the recorders start (migrations, the group) one after the other: the first
        # starts draining while the others start; all are timed from the first's start
        rec, _ = _recorder(db_url, redis.url)
        recs.append(rec)
        engine = _engine(db_url)
        cpu0, t0 = procs.cpu_of([rec]), time.monotonic()
        for _ in range(recorders - 1):
            recs.append(_recorder(db_url, redis.url)[0])
        while _count(engine) < n:
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        out = {"rows": n, "recorders": recorders, "seconds": seconds, "rows_per_s": n / seconds,
               "append_s": filled, "outbox_bytes_per_entry": outbox_bytes / n,
               "recorder_cpu_ms_per_row": 1000 * (procs.cpu_of(recs) - cpu0) / n}
        out.update(_bytes(engine, n))
        engine.dispose()
        return out
    finally:
        for r in recs:
            stop(r)
        redis.close()


def _bytes(engine, n: int) -> dict:
    import sqlalchemy as sa

    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            def size(t):
                return conn.execute(sa.text(
                    "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(:t)"),
                    {"t": t}).scalar()
            rows, events = size("executions"), size("execution_events")
        else:
            def size(t):
                return conn.execute(sa.text(
                    "SELECT sum(pgsize) FROM dbstat WHERE name = :t OR name IN "
                    "(SELECT name FROM sqlite_master WHERE tbl_name = :t AND type = 'index')"),
                    {"t": t}).scalar()
            try:
                rows, events = size("executions"), size("execution_events")
            except Exception:  # noqa: BLE001 - SQLite built without dbstat
                rows = events = None
    return {"row_bytes": rows / n if rows else None,
            "event_bytes": events / n if events else None}


def latency(db_url: str, seconds: float, per_s: int) -> dict:
    import sqlalchemy as sa

    redis = Redis().start()
    rec = None
    try:
        client, finish = _finisher(redis.url)
        rec, _ = _recorder(db_url, redis.url)
        engine = _engine(db_url)
        seen: list[float] = []
        stop_at = time.monotonic() + seconds
        done = threading.Event()

        def reader():
            last = 0
            while not done.is_set():
                with engine.connect() as conn:
                    got = conn.execute(sa.text(
                        "SELECT id, finished_at FROM executions WHERE id > :l ORDER BY id"),
                        {"l": last}).all()
                now = time.time()
                for row_id, finished in got:
                    seen.append(now - finished)
                    last = max(last, row_id)
                time.sleep(0.01)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        sent, tick = 0, 0.05
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            k = max(1, int(per_s * tick))
            finish(k, f"l{sent}.")
            sent += k
            time.sleep(max(0.0, tick - (time.monotonic() - t0)))
        deadline = time.monotonic() + 60
        while len(seen) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        done.set()
        t.join(5)
        engine.dispose()
        q = statistics.quantiles(seen, n=100)
        return {"executions": sent, "seen": len(seen), "p50_s": q[49], "p99_s": q[98],
                "max_s": max(seen)}
    finally:
        if rec is not None:
            stop(rec)
        redis.close()


def _postgres():
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import PostgresServer

    return PostgresServer(fsync=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="overhead,rate,latency")
    parser.add_argument("--repeats", type=int, help="runs of each overhead variant")
    parser.add_argument("--scenarios", default="noop,chat", help="overhead drains to run")
    parser.add_argument("--recorders", type=int, default=1, help="recorders of the rate part")
    parser.add_argument("--databases", default="sqlite,postgresql",
                        help="databases of the rate and latency parts")
    args = parser.parse_args(argv)
    size = dict(SIZES["quick" if args.quick else "full"])
    if args.repeats:
        size["repeats"] = args.repeats
    size["scenarios"] = args.scenarios.split(",")
    parts = args.parts.split(",")

    def log(msg):
        print(msg, flush=True)

    procs.install_signal_handlers()
    out: dict = {"sizes": size, "cpus": os.cpu_count(),
                 "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    pg = (_postgres() if {"rate", "latency"} & set(parts)
          and "postgresql" in args.databases.split(",") else None)
    try:
        if "overhead" in parts:
            log("overhead (history off / on)")
            out["overhead"] = overhead(size, log)
        for name, url in (("sqlite", lambda: f"sqlite:///{tmpdir('hist')}/h.db"),
                          ("postgresql", lambda: pg.create_database())):
            if name not in args.databases.split(","):
                continue
            if "rate" in parts:
                out.setdefault("rate", {})[name] = r = rate(url(), size["rate"],
                                                            args.recorders)
                log(f"rate {name}: {r}")
            if "latency" in parts:
                out.setdefault("latency", {})[name] = r = latency(
                    url(), size["latency_s"], size["rate_per_s"])
                log(f"latency {name}: {r}")
    finally:
        if pg is not None:
            pg.cleanup()
    path = ROOT / "bench" / "results" / (
        f"history-{'quick-' if args.quick else ''}"
        f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H%M}.json")
    path.write_text(json.dumps(out, indent=1, default=str))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
