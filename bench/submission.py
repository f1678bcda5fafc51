"""Scenario ``submit`` (issue 20, item 5): how many submissions one core makes, no worker
running. Each run starts a fresh redis-server and submits ``submit_tasks`` echo no-ops:

- ``aiecs .delay()``: ``execute_task.delay`` in a loop (bench/submit.py), spread over users
  (the per-user quotas stay on: one user's bucket holds 1,000);
- ``aiecs POST /tasks``: through a real ``aiecs serve``, an aiohttp client with keep-alive,
  32 requests in flight (bench/http_submit.py); the submitter's CPU is the server's;
- ``celery .delay()``: bare Celery's (bench/anchor_app.py), result backend on;
- ``arq enqueue_job``: arq's, one at a time (bench/submit_arq.py).

``per_core``: submissions per CPU second of the submitting process (the server for POST);
Redis's CPU and the HTTP load generator's are shown apart.
"""

from __future__ import annotations

from pathlib import Path

from .procs import Child, Redis, arq_python, base_env, delta, group_cpu, stop

HTTP_CONCURRENCY = 32
WARM = 20


def submit_once(variant: str, n: int, profile: Path | None = None) -> dict:
    """One run; ``profile``: a folder for py-spy's collapsed stacks of the submitter (the
    server for POST) over the measured span."""
    from .progress import SECRET, _server
    from .throughput import PROFILE_RATE, _profile_start, _profile_stop

    redis = Redis().start()
    server = child = None
    spies = []
    users = max(1, n // 100)
    try:
        env = base_env(CELERY_BROKER_URL=redis.url, REDIS_URL=redis.url,
                       AIECS_SECRET_KEY=SECRET)
        if variant == "aiecs POST /tasks":
            server, url = _server("aiecs", redis.url)
            child = Child("bench.http_submit", {"url": url, "n": n, "users": users,
                                                "secret": SECRET, "warm": WARM,
                                                "concurrency": HTTP_CONCURRENCY}, env=env)
        elif variant == "arq enqueue_job":
            child = Child("bench.submit_arq", {"kind": "noop", "n": n, "warm": WARM,
                                               "wait": False}, env=env, python=arq_python())
        else:
            app = "aiecs" if variant.startswith("aiecs") else "anchor"
            child = Child("bench.submit", {"app": app, "kind": "noop", "n": n, "warm": WARM,
                                           "wait": False, "users": users}, env=env)
        child.ready()
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
            target = server.pid if server else child.proc.pid
            spies = [_profile_start(profile, "submitter", target, PROFILE_RATE)]
        before = redis.counters()
        server0 = group_cpu(server.pid) if server else 0.0
        child.go()
        res = child.result(timeout=600)
        counts = delta(before, redis.counters())
        server_cpu = group_cpu(server.pid) - server0 if server else 0.0
        _profile_stop(spies)
        submitter = server_cpu if server else res["client_cpu"]
        return {
            "tasks": n, "failed": res["failed"], "submit_s": res["submit_s"],
            "per_s": n / res["submit_s"],
            "per_core": n / submitter if submitter else None,
            "submitter_cpu_us": 1e6 * submitter / n,
            "redis_cpu_us": 1e6 * counts["cpu"] / n,
            "http_client_cpu_us": 1e6 * res["client_cpu"] / n if server else None,
            "commands": counts["commands"] / n, "round_trips": counts["reads"] / n,
            "by_command": {k: round(v / n, 3) for k, v in sorted(
                counts["by_command"].items(), key=lambda kv: -kv[1]) if v / n >= 0.01},
        }
    finally:
        _profile_stop(spies)
        if child:
            child.close()
        if server:
            stop(server)
        redis.close()


VARIANTS = ("aiecs .delay()", "aiecs POST /tasks", "celery .delay()", "arq enqueue_job")


def submit(p: dict, alternate) -> dict:
    n = p["submit_tasks"]
    return {f"{n} submissions": alternate({v: (lambda v=v: submit_once(v, n))
                                           for v in VARIANTS})}
