"""``GET /executions`` at 1 M rows (issue 18, item 4: p95 target < 100 ms), on SQLite and
on PostgreSQL, through a real ``aiecs serve``.

    uv run python -m bench.history_query                      # 1,000,000 rows, both databases
    uv run python -m bench.history_query --rows 100000 --databases sqlite --requests 50

The rows are synthetic and bulk-loaded into a fresh database migrated by
``aiecs_history.db.upgrade`` (SQLite: executemany in one transaction; PostgreSQL: COPY),
shaped like a month of a team's use: 1,000 users, one of them with a tenth of all rows,
95 % completed, 3 % failed; three providers, six models; a fifth of the rows in batches
of 100, a twentieth in workflows, a tenth from templates. Then one client sends the
requests of each scenario one after the other (no concurrency: the latency of one
request, not a throughput) and the p50 / p95 / max of their wall-clock times are kept.
The raw numbers land in ``bench/results/history-query-<db>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from .procs import ROOT, base_env, cleanup, free_port, install_signal_handlers, spawn, stop, tmpdir

SECRET = "bench-secret-" + "x" * 40
USERS = 1000
HEAVY = "u0000"  # a tenth of all rows
T_END = 1_780_000_000.0
SPAN = 30 * 86_400.0  # a month
MODELS = {"openai": ["gpt-4o-mini", "gpt-4o"], "vertex": ["gemini-2.0-flash", "gemini-pro"],
          "xai": ["grok-3", "grok-3-mini"]}
STATUSES = ["completed"] * 95 + ["failed"] * 3 + ["timed_out", "cancelled"]


# -- the rows -------------------------------------------------------------------------------
def rows(n: int, seed: int = 18):
    """``n`` execution rows, oldest first (the order the recorder writes them in)."""
    rnd = random.Random(seed)
    batch_left, batch_id, batch_user = 0, None, None
    for i in range(n):
        finished = T_END - SPAN + SPAN * i / n
        if batch_left:
            user, batch_left = batch_user, batch_left - 1
            batch = batch_id
        elif rnd.random() < 0.002:  # a batch of 100 starts: a fifth of the rows
            batch_user = HEAVY if rnd.random() < 0.1 else f"u{rnd.randrange(1, USERS):04d}"
            batch_id, batch_left = f"b{i}", 99
            user, batch = batch_user, batch_id
        else:
            user = HEAVY if rnd.random() < 0.1 else f"u{rnd.randrange(1, USERS):04d}"
            batch = None
        service = rnd.choice(list(MODELS))
        status = rnd.choice(STATUSES)
        workflow = f"w{i // 4}" if rnd.random() < 0.05 else None
        template = (f"tpl{rnd.randrange(5)}", rnd.randrange(1, 4)) if rnd.random() < 0.1 else (
            None, None)
        tin, tout = rnd.randrange(20, 2000), rnd.randrange(1, 800)
        yield {
            "user_id": user, "task_id": f"t{i:08d}", "step": 1,
            "celery_id": f"{i:08d}-0000-0000-0000-000000000000", "batch_id": batch,
            "workflow_id": workflow, "schedule_id": None, "mode": "llm", "service": service,
            "operation": rnd.choice(["chat", "chat", "chat", "embed"]),
            "model": rnd.choice(MODELS[service]), "queue": "fast_tasks", "worker": "w1@host",
            "plugin_dist": f"aiecs-providers-{service}", "plugin_version": "0.1.0",
            "template_name": template[0], "template_version": template[1], "status": status,
            "error_type": "RateLimitError" if status == "failed" else None,
            "error_message": "rate limited by the provider" if status == "failed" else None,
            "deliveries": 1, "created_at": finished - 3, "started_at": finished - 2.5,
            "first_output_at": finished - 2, "finished_at": finished, "queue_wait_ms": 500,
            "run_ms": 2500, "input_tokens": tin, "output_tokens": tout, "cached_tokens": 0,
            "reasoning_tokens": 0, "usage_source": "reported",
            "cost": round(tin * 1.5e-7 + tout * 6e-7, 8), "price_version": "2026-11",
            "recorded_at": finished + 0.2,
        }


def load(url: str, n: int) -> float:
    """Migrate the database at ``url`` and bulk-load ``n`` rows; seconds taken."""
    from aiecs_history import db

    engine = db.connect(url)
    db.upgrade(engine)
    engine.dispose()
    start = time.monotonic()
    it = rows(n)
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA synchronous=OFF")
        first = next(it)
        cols = list(first)
        sql = (f"INSERT INTO executions ({', '.join(cols)}) "
               f"VALUES ({', '.join('?' * len(cols))})")
        with conn:
            conn.execute(sql, [first[c] for c in cols])
            chunk: list[list] = []
            for row in it:
                chunk.append([row[c] for c in cols])
                if len(chunk) == 50_000:
                    conn.executemany(sql, chunk)
                    chunk.clear()
            conn.executemany(sql, chunk)
        conn.close()
    else:
        import psycopg

        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn, conn.cursor() as cur:
            first = next(it)
            cols = list(first)
            with cur.copy(f"COPY executions ({', '.join(cols)}) FROM STDIN") as copy:
                copy.write_row([first[c] for c in cols])
                for row in it:
                    copy.write_row([row[c] for c in cols])
            cur.execute("ANALYZE executions")  # what autovacuum does after a bulk load
    return time.monotonic() - start


# -- PostgreSQL --------------------------------------------------------------------------------
def _pg_bin(name: str) -> str:
    import glob

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found and not shutil.which(name):
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found[-1] if found else shutil.which(name)


def start_postgres() -> tuple[subprocess.Popen, str]:
    """A private PostgreSQL (fsync on: the defaults of a real server) and its URL."""
    import pwd

    data_dir = tmpdir("pg")
    kwargs = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(data_dir, pw.pw_uid, pw.pw_gid)
        kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    subprocess.run([_pg_bin("initdb"), "-D", str(data_dir / "d"), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True, **kwargs)
    port = free_port()
    proc = subprocess.Popen(
        [_pg_bin("postgres"), "-D", str(data_dir / "d"), "-p", str(port), "-c",
         "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        **kwargs)
    deadline = time.monotonic() + 30
    while subprocess.run([_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                         capture_output=True).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("postgres did not start")
        time.sleep(0.1)
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    return proc, f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench"


# -- the server and the requests ---------------------------------------------------------------
def start_server(redis_url: str, database_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = base_env(REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url, AIECS_SECRET_KEY=SECRET,
                   AIECS_DATABASE_URL=database_url)
    proc = spawn([sys.executable, "-m", "aiecs_worker.cli", "serve", "--port", str(port),
                  "--log-level", "warning"], env=env, log=tmpdir("server") / "server.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("aiecs serve did not start") from None
            time.sleep(0.1)


def get(url: str, path: str, token: str) -> tuple[float, dict]:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = resp.read()
    took = time.perf_counter() - start
    return took, json.loads(body)


def scenarios(rnd: random.Random, n_requests: int):
    """(name, [(user, params)]) per scenario; user None = an operator's token; a plan
    "deep" or "batch" is built while measuring (it needs cursors / batch ids)."""
    typical = [f"u{rnd.randrange(1, USERS):04d}" for _ in range(n_requests)]
    models = [m for ms in MODELS.values() for m in ms]
    yield "a user's first page (50)", [(u, {}) for u in typical]
    yield "the heavy user's first page (50, 100 k rows)", [(HEAVY, {})] * n_requests
    yield "the heavy user, pages 2-21 (cursor)", "deep"
    yield "the heavy user, limit=500", [(HEAVY, {"limit": 500})] * max(2, n_requests // 4)
    yield "the heavy user, status=failed", [(HEAVY, {"status": "failed"})] * n_requests
    yield "the heavy user, model=X (unindexed filter)", [
        (HEAVY, {"model": rnd.choice(models)}) for _ in range(n_requests)]
    yield "the heavy user, one day (since/until)", [
        (HEAVY, {"since": T_END - d * 86_400, "until": T_END - (d - 1) * 86_400})
        for d in (rnd.randrange(1, 30) for _ in range(n_requests))]
    yield "a batch's items (batch_id)", "batch"
    yield "operator: every user's first page", [(None, {})] * n_requests
    yield "operator: every user's failures", [(None, {"status": "failed"})] * n_requests


def _plan(url: str, plan, n_requests: int, token) -> list[tuple[str | None, dict]]:
    if plan == "deep":  # 20 pages after the first, by the cursors the server hands out
        out = []
        for _ in range(max(1, n_requests // 20)):
            _, page = get(url, "/executions", token(HEAVY))
            for _ in range(20):
                if page["next_cursor"] is None:  # a small load (the smoke test)
                    break
                out.append((HEAVY, {"cursor": page["next_cursor"]}))
                _, page = get(url, "/executions?cursor=" + page["next_cursor"], token(HEAVY))
        if not out:
            out.append((HEAVY, {}))
        return out
    if plan == "batch":
        _, page = get(url, "/executions?limit=500", token(None))
        batches = sorted({(r["user_id"], r["batch_id"]) for r in page["items"]
                          if r["batch_id"]}) or [(HEAVY, "none")]
        return [(batches[i % len(batches)][0], {"batch_id": batches[i % len(batches)][1]})
                for i in range(n_requests)]
    return plan


def measure(url: str, database_url: str, server_pid: int, n_requests: int) -> dict:
    """Per scenario: the requests' wall-clock times through the server, the same queries'
    times in this process (the database alone: aiecs_history.queries), the server's CPU
    per request, and the machine's load average (the bench shares the machine)."""
    from aiecs_history import db, queries
    from aiecs_worker.server.tokens import issue_token

    from .procs import group_cpu

    rnd = random.Random(7)
    tokens: dict[str | None, str] = {None: issue_token("ops", SECRET, 3600,
                                                       scopes=("operator",))}

    def token(user):
        if user not in tokens:
            tokens[user] = issue_token(user, SECRET, 3600)
        return tokens[user]

    engine = db.connect(database_url)
    out = {}
    for name, plan in scenarios(rnd, n_requests):
        requests = _plan(url, plan, n_requests, token)
        user, params = requests[0]
        get(url, "/executions?" + urllib.parse.urlencode(params), token(user))  # warm it
        http, alone = [], []
        cpu0, load0 = group_cpu(server_pid), os.getloadavg()[0]
        for user, params in requests:
            took, _ = get(url, "/executions?" + urllib.parse.urlencode(params), token(user))
            http.append(took)
        cpu = group_cpu(server_pid) - cpu0
        for user, params in requests:
            q = dict(params)
            limit, cursor = q.pop("limit", 50), q.pop("cursor", None)
            start = time.perf_counter()
            queries.list_executions(engine, queries.Filters(user_id=user, **q), limit=limit,
                                    cursor=cursor)
            alone.append(time.perf_counter() - start)
        out[name] = {**_stats(http), "query": _stats(alone),
                     "server_cpu_ms_per_request": 1000 * cpu / len(requests),
                     "load_average": [load0, os.getloadavg()[0]]}
        r = out[name]
        print(f"  {name}: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, max "
              f"{r['max_ms']:.1f} ms; query alone p95 {r['query']['p95_ms']:.1f} ms; server "
              f"CPU {r['server_cpu_ms_per_request']:.1f} ms/request; load "
              f"{load0:.1f}", flush=True)
    for group in ("day", "model"):
        times = [get(url, f"/usage?group_by={group}", token(f"u{i:04d}"))[0]
                 for i in range(1, 21)]
        out[f"usage by {group}, a typical user (not a target)"] = _stats(times)
    engine.dispose()
    return out


def _stats(times: list[float]) -> dict:
    """n, p50, p95 (inclusive quantiles) and max, in milliseconds."""
    ms = sorted(1000 * t for t in times)
    p95 = statistics.quantiles(ms, n=20, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p95_ms": p95, "max_ms": ms[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per scenario")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    install_signal_handlers()
    from .procs import Redis

    try:
        redis = Redis().start()
        for kind in args.databases.split(","):
            pg = None
            if kind == "sqlite":
                db_url = f"sqlite:///{tmpdir('sqlite')}/history.db"
            else:
                pg, db_url = start_postgres()
            print(f"{kind}: loading {args.rows:,} rows ...", flush=True)
            load_s = load(db_url, args.rows)
            size = _size(db_url)
            print(f"{kind}: loaded in {load_s:.0f} s ({size / 1e6:.0f} MB)", flush=True)
            server, url = start_server(redis.url, db_url)
            try:
                results = measure(url, db_url, server.pid, args.requests)
            finally:
                stop(server)
                if pg is not None:
                    stop(pg)
            report = {"database": kind, "rows": args.rows, "load_s": load_s,
                      "bytes": size, "requests_per_scenario": args.requests,
                      "scenarios": results, "machine": platform.platform(),
                      "cpus": os.cpu_count(), "commit": _commit()}
            Path(args.out).mkdir(parents=True, exist_ok=True)
            Path(args.out, f"history-query-{kind}.json").write_text(
                json.dumps(report, indent=2) + "\n")
        redis.close()
    finally:
        cleanup()
    return 0


def _size(url: str) -> int:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
