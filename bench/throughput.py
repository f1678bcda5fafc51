"""Task throughput: aiecs against bare Celery on the same machine, same Redis, same pool.

    uv run python bench/throughput.py [--tasks 2000] [--concurrency 8] [--pool threads]

Each scenario gets a private redis-server and a fresh worker process; one process submits
all tasks with ``.delay()`` then waits for every result. Workers are launched identically
(same flags, WARNING logs: at INFO Celery formats every task's arguments and result).
Reported: submit rate and end-to-end rate (tasks / seconds from first submit to last
result). Writes ``bench/results/
throughput-<date>.json`` and prints a table. Numbers are for comparison on one machine,
not absolutes; the echo provider stands in for a provider call (``delay`` seconds each).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.worker import CELERY  # noqa: E402


def _aiecs_kwargs(i: int, delay: float) -> dict:
    return dict(task_name="echo", user_id="bench", task_id=f"t{i}", step=1, mode="test",
                service="echo", input_data={"text": "hello world", "chunks": 1,
                                            "delay": delay}, context={})


def _measure(submit, n: int) -> dict:
    submit(-1).get(timeout=60)  # warm-up: worker ready, plugins and clients loaded
    t0 = time.perf_counter()
    results = [submit(i) for i in range(n)]
    t1 = time.perf_counter()
    for r in results:
        r.get(timeout=300)
    t2 = time.perf_counter()
    return {"tasks": n, "submit_per_s": round(n / (t1 - t0), 1),
            "end_to_end_per_s": round(n / (t2 - t0), 1), "seconds": round(t2 - t0, 3)}


def start_celery(app: str, pool: str, concurrency: int, env: dict[str, str]) -> subprocess.Popen:
    """``celery -A app worker``, launched the same way for every scenario (WARNING logs)."""
    return subprocess.Popen(
        [CELERY, "-A", app, "worker", "--pool", pool, "--concurrency", str(concurrency),
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "WARNING"],
        cwd=ROOT / "bench", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True)


def stop_celery(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def bare_celery(n: int, pool: str, concurrency: int) -> dict:
    redis = RedisServer().start()
    env = dict(os.environ, CELERY_BROKER_URL=redis.url, PYTHONPATH=str(ROOT / "bench"))
    proc = start_celery("bare_celery_app", pool, concurrency, env)
    os.environ["CELERY_BROKER_URL"] = redis.url
    sys.path.insert(0, str(ROOT / "bench"))
    import bare_celery_app

    bare_celery_app.app.conf.broker_url = redis.url
    bare_celery_app.app.conf.result_backend = redis.url
    try:
        return _measure(lambda i: bare_celery_app.noop.delay(**_aiecs_kwargs(i, 0)), n)
    finally:
        stop_celery(proc)
        bare_celery_app.app.close()
        redis.close()


def aiecs(n: int, pool: str, concurrency: int, delay: float) -> dict:
    """In a child interpreter: aiecs_worker's Celery app reads its URLs once, at import."""
    out = subprocess.run(
        [sys.executable, __file__, "--child-aiecs", str(n), pool, str(concurrency), str(delay)],
        capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_aiecs(n: int, pool: str, concurrency: int, delay: float) -> None:
    redis = RedisServer().start()
    os.environ["CELERY_BROKER_URL"] = os.environ["REDIS_URL"] = redis.url
    proc = start_celery("aiecs_worker", pool, concurrency, dict(os.environ))
    from aiecs_worker import app, execute_task

    try:
        print(json.dumps(_measure(lambda i: execute_task.delay(**_aiecs_kwargs(i, delay)), n)))
    finally:
        stop_celery(proc)
        app.close()
        redis.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-aiecs":
        n, pool, conc, delay = sys.argv[2:6]
        _child_aiecs(int(n), pool, int(conc), float(delay))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--slow-tasks", type=int, default=1000)
    parser.add_argument("--slow-concurrency", type=int, default=200)
    args = parser.parse_args()

    rows = {
        "bare celery no-op": bare_celery(args.tasks, args.pool, args.concurrency),
        "aiecs echo no-op": aiecs(args.tasks, args.pool, args.concurrency, 0.0),
        "aiecs echo 200 ms": aiecs(args.slow_tasks, "threads", args.slow_concurrency, 0.2),
    }
    ratio = rows["aiecs echo no-op"]["end_to_end_per_s"] / rows["bare celery no-op"][
        "end_to_end_per_s"]
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "pool": args.pool, "concurrency": args.concurrency,
        "scenarios": rows, "aiecs_noop_vs_bare": round(ratio, 3),
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"throughput-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name:20s} submit {row['submit_per_s']:8.1f}/s   end-to-end "
              f"{row['end_to_end_per_s']:8.1f}/s   ({row['tasks']} tasks, {row['seconds']} s)")
    print(f"aiecs no-op / bare celery no-op: {ratio:.2f}x   -> {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
