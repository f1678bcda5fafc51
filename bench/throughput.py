"""Drain scenarios: a batch of tasks submitted at once, timed until the last result.

Each run starts a fresh redis-server, its worker process(es) and (for chat) a fresh local
LLM server, and measures between the producer's ``go`` and its last result:

- ``per_s``: tasks / seconds from the first submit to the last result;
- CPU ms per task of the worker process groups (main process, pool children), of
  redis-server, of the producer, and their sum (``cpu_ms``), from /proc utime + stime;
- Redis ``commands`` per task: Δ of INFO commandstats calls (commands run inside Lua
  scripts included, the bench's own INFO calls excluded);
- Redis ``round_trips`` per task: Δ of INFO stats ``total_reads_processed``, the request
  batches Redis read (a pipeline or a MULTI sent in one write counts once; blocking
  BRPOP polls count too, as they are round trips of the worker);
- for chat: mean calls in flight at the LLM server (Δ summed request time / seconds) and
  the most at once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from . import fake_llm
from .procs import (
    AIECS_APP,
    ANCHOR_APP,
    ARQ_APP,
    PY,
    ArqWorker,
    Child,
    Redis,
    Worker,
    arq_python,
    base_env,
    cpu_of,
    delta,
    spawn,
    stop,
    tmpdir,
    wait_ready,
)

CHAT_LATENCY = 0.2

#: Settings given to every aiecs process of every drain (workers, producer, recorder):
#: ``python -m bench --aiecs-env KEY=VALUE`` (an ablation: a guarantee switched off by
#: configuration, e.g. AIECS_HISTORY=0). Not given to the anchors' processes.
AIECS_ENV: dict[str, str] = {}


#: chat tasks spread over this many users (aiecs's per-user quotas are on, as deployed: one
#: user's 3,000 at once would meet the submission bucket's burst of 1,000)
CHAT_USERS = 20
#: py-spy's samples per second in a profiled drain (bench/profile.py sets it)
PROFILE_RATE = 100


def _profile_start(folder: Path, name: str, pid: int, rate: int) -> subprocess.Popen:
    """py-spy sampling ``pid`` (and its children), ``--gil``, collapsed stacks."""
    py_spy = str(Path(PY).with_name("py-spy"))
    return spawn([py_spy, "record", "--pid", str(pid), "--subprocesses", "--gil",
                  "--rate", str(rate), "--format", "raw",
                  "--output", str(folder / f"{name}.txt")],
                 log=folder / f"{name}.py-spy.log")


def _profile_stop(spies: list[subprocess.Popen]) -> None:
    for spy in spies:  # py-spy writes its output on SIGINT
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop(spy)


def drain(app: str, *, n: int, pool: str = "threads", concurrency: int = 8,
          processes: int = 1, kind: str = "noop", warm: int = 8,
          extra_env: dict[str, str] | None = None, recorder: str | None = None,
          users: int = 1, profile: Path | None = None,
          submit: dict | None = None) -> dict:
    """One drain of ``n`` tasks. ``recorder``: a history database URL; an ``aiecs
    recorder`` runs on it, its CPU counted with the workers' (``recorder_cpu_ms`` apart
    too), and the run waits until it has recorded every task before reading the CPU
    counters. ``profile``: a folder for py-spy's collapsed stacks of every worker and the
    producer over the measured span (CPU figures then include the sampling's pauses: a
    profile run is not a measurement run). ``submit``: more of the producer's configuration
    (``template``, ``max_output_tokens``: bench/submit.py)."""
    redis = Redis().start()
    llm = workers = child = rec = None
    spies: list[subprocess.Popen] = []
    env: dict[str, str] = {}
    try:
        if kind not in ("noop", "batch"):
            llm, llm_port, base_url = fake_llm.start(latency=CHAT_LATENCY)
            env = {"OPENAI_API_KEY": "sk-bench-0123456789", "OPENAI_BASE_URL": base_url}
        if app == AIECS_APP:
            env.update(AIECS_ENV)
        env.update(extra_env or {})
        if app == ARQ_APP:
            workers = [ArqWorker(redis.url, concurrency, env).start() for _ in range(processes)]
        else:
            workers = [Worker(app, redis.url, pool, concurrency, env).start()
                       for _ in range(processes)]
        wait_ready(redis.url, workers)
        if recorder:
            rec_log = tmpdir("recorder") / "recorder.log"
            rec = spawn([sys.executable, "-m", "aiecs_worker.cli", "recorder",
                         "--database-url", recorder],
                        env=base_env(CELERY_BROKER_URL=redis.url, REDIS_URL=redis.url, **env),
                        log=rec_log)
            # started (imports, migrations): its start-up is not part of the run's CPU
            deadline = time.monotonic() + 60
            while b"recording into" not in rec_log.read_bytes():
                if rec.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("recorder did not start: " + rec_log.read_text())
                time.sleep(0.05)
        child_env = base_env(CELERY_BROKER_URL=redis.url, REDIS_URL=redis.url, **env)
        if app == ARQ_APP:
            child = Child("bench.submit_arq", {"kind": kind, "n": n, "warm": warm},
                          env=child_env, python=arq_python())
        else:
            child = Child("bench.submit", {"app": "aiecs" if app == AIECS_APP else "anchor",
                                           "kind": kind, "n": n, "warm": warm,
                                           "users": users, **(submit or {})},
                          env=child_env)
        child.ready()
        procs = [w.proc for w in workers]
        rec0 = cpu_of([rec]) if rec else 0.0
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
            spies = [_profile_start(profile, f"worker{i}", w.proc.pid, PROFILE_RATE)
                     for i, w in enumerate(workers)]
            spies.append(_profile_start(profile, "producer", child.proc.pid, PROFILE_RATE))
        before, cpu0 = redis.counters(), cpu_of(procs)
        llm0 = fake_llm.stats(llm_port) if llm else None
        child.go()
        res = child.result(timeout=900)
        rec_used = 0.0
        if rec:  # the recorder's share of the run: until the outbox is empty
            deadline = time.monotonic() + 120
            while redis.client.xlen("aiecs:outbox") and time.monotonic() < deadline:
                time.sleep(0.05)
            rec_used = cpu_of([rec]) - rec0
        used, counts = cpu_of(procs) - cpu0 + rec_used, delta(before, redis.counters())
        _profile_stop(spies)
        out = {
            "tasks": n, "failed": res["failed"], "seconds": res["seconds"],
            "submit_s": res["submit_s"],
            "per_s": res["per_s"],
            "worker_cpu_ms": 1000 * used / n,
            "redis_cpu_ms": 1000 * counts["cpu"] / n,
            "client_cpu_ms": 1000 * res["client_cpu"] / n,
            "commands": counts["commands"] / n,
            "round_trips": counts["reads"] / n,
            "by_command": {k: round(v / n, 3) for k, v in sorted(
                counts["by_command"].items(), key=lambda kv: -kv[1]) if v / n >= 0.01},
        }
        out["workers_cpu_ms"] = 1000 * (used - rec_used) / n
        if rec:
            out["recorder_cpu_ms"] = 1000 * rec_used / n
        out["cpu_ms"] = out["worker_cpu_ms"] + out["redis_cpu_ms"] + out["client_cpu_ms"]
        out["cpu_us"] = 1000 * out["cpu_ms"]
        out["cores_busy"] = (used + counts["cpu"] + res["client_cpu"]) / res["seconds"]
        if llm:
            llm1 = fake_llm.stats(llm_port)
            out["in_flight_mean"] = (llm1["busy"] - llm0["busy"]) / res["seconds"]
            out["in_flight_max"] = llm1["max_in_flight"]
            out["worker_cores_busy"] = used / res["seconds"]
        return out
    finally:
        _profile_stop(spies)
        if rec:
            stop(rec)
        if child:
            child.close()
        for w in workers or []:
            w.close()
        if llm:
            stop(llm)
        redis.close()


def noop(p: dict, alternate) -> dict:
    """Scenarios 1 and 2: no-op drain, threads -c8 and prefork -c2, the same pool for
    aiecs and the anchor; then aiecs's recommended pool for the fast queue (asyncio -c8)
    against bare Celery's threads -c8 (Celery has no asyncio pool)."""
    out = {}
    for pool, conc in (("threads", 8), ("prefork", 2), ("asyncio", 8)):
        anchor_pool = "threads" if pool == "asyncio" else pool
        if pool not in p["noop_pools"]:
            continue
        name = f"{pool} -c{conc}" + (f" (anchor: {anchor_pool} -c{conc})"
                                     if anchor_pool != pool else "")
        out[name] = alternate({
            "aiecs": lambda pool=pool, conc=conc: drain(AIECS_APP, n=p["noop_tasks"],
                                                        pool=pool, concurrency=conc),
            "anchor": lambda pool=anchor_pool, conc=conc: drain(
                ANCHOR_APP, n=p["noop_tasks"], pool=pool, concurrency=conc),
        })
    return out


def events(p: dict, alternate) -> dict:
    """Celery's task events off (the default) and on (``AIECS_TASK_EVENTS=1``, worker and
    producer): the no-op drain, threads -c8 and prefork -c2, nobody consuming the events."""
    out = {}
    for pool, conc in (("threads", 8), ("prefork", 2)):
        out[f"{pool} -c{conc}"] = alternate({
            "off": lambda pool=pool, conc=conc: drain(AIECS_APP, n=p["noop_tasks"],
                                                      pool=pool, concurrency=conc),
            "on": lambda pool=pool, conc=conc: drain(
                AIECS_APP, n=p["noop_tasks"], pool=pool, concurrency=conc,
                extra_env={"AIECS_TASK_EVENTS": "1"}),
        })
    return out


def tracing(p: dict, alternate) -> dict:
    """Tracing off (the default) and on (``AIECS_TRACING=1`` in the worker and the
    producer, exporting every span over OTLP/HTTP to a local receiver, bench/otlp_sink.py):
    the chat drain, threads -c200."""
    from .otlp_sink import Sink

    n = p["tracing_tasks"]

    def on() -> dict:
        sink = Sink()
        try:
            out = drain(AIECS_APP, n=n, kind="chat", concurrency=200, extra_env={
                "AIECS_TRACING": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                "OTEL_SERVICE_NAME": "aiecs-bench"})
            # the worker's last batch is exported when it stops (drain's finally)
            out["spans_per_task"] = sink.spans / n
            out["export_kb_per_task"] = sink.bytes / 1024 / n
            return out
        finally:
            sink.close()

    return {"chat, threads -c200": alternate({
        "off": lambda: drain(AIECS_APP, n=n, kind="chat", concurrency=200),
        "on": on,
    })}


def scaling(p: dict, alternate) -> dict:
    """Scenario 7: 1, 2, 4 threads worker processes (-c8 each) draining no-ops."""
    out = {}
    for procs in p["scaling"]:
        out[f"{procs} process{'es' if procs > 1 else ''}"] = alternate({
            "aiecs": lambda k=procs: drain(AIECS_APP, n=p["noop_tasks"], processes=k),
            "anchor": lambda k=procs: drain(ANCHOR_APP, n=p["noop_tasks"], processes=k),
        })
    return out


def batch(p: dict, alternate) -> dict:
    """Scenario 8: ``batch_tasks`` echo no-ops as one batch (``submit_batch``: records
    pipelined, one producer) against as many ``execute_task.delay`` calls; the "anchor"
    column is the single submissions."""
    n = p["batch_tasks"]
    return {f"{n} tasks, threads -c8": alternate({
        "aiecs": lambda: drain(AIECS_APP, n=n, kind="batch"),
        "anchor": lambda: drain(AIECS_APP, n=n, kind="noop"),
    })}


#: issue 20's anchors of the chat scenario, each as its best user would configure it
GEVENT = {"pool": "gevent", "concurrency": 500, "processes": 2}
ARQ = {"concurrency": 500, "processes": 2}  # max_jobs 500 per worker


def chat_variants(p: dict, recommended: dict, profile: Path | None = None) -> dict:
    """aiecs's recommended deployment (with its history recorder), bare Celery on gevent,
    arq: ``chat_tasks`` each."""
    n, warm = p["chat_tasks"], 8

    def run(app: str, cfg: dict, name: str):
        def one() -> dict:
            # aiecs as deployed: the history outbox (AIECS_HISTORY, on by default) drained
            # by an ``aiecs recorder`` into SQLite, its CPU counted with the workers'
            db = f"sqlite:///{tmpdir('hist')}/h.db" if app == AIECS_APP else None
            if AIECS_ENV.get("AIECS_HISTORY", "1").lower() in ("0", "false", "no", "off"):
                db = None  # --aiecs-env AIECS_HISTORY=0: no outbox, no recorder
            return drain(app, n=n, kind="chat", warm=warm, users=CHAT_USERS, recorder=db,
                         profile=profile / name if profile else None, **cfg)
        return one

    base = {k: v for k, v in recommended.items() if k != "also"}
    variants = {"aiecs": run(AIECS_APP, base, "aiecs")}
    for pool in recommended.get("also", ()):  # --chat-also: the same deployment, other pools
        variants[f"aiecs {pool}"] = run(AIECS_APP, {**base, "pool": pool}, f"aiecs-{pool}")
    return {**variants, "celery gevent": run(ANCHOR_APP, GEVENT, "celery-gevent"),
            "arq": run(ARQ_APP, ARQ, "arq")}


def chat(p: dict, alternate, recommended: dict) -> dict:
    """Scenario 3: 200 ms chat calls through the openai SDK against the local server:
    aiecs's recommended deployment, bare Celery on gevent and arq, alternated; the old
    anchor (bare Celery prefork -c2, ``chat_anchor_tasks``) as a footnote."""
    out = {"recommended": alternate(chat_variants(p, recommended))}
    out["prefork -c2"] = alternate({
        "celery prefork": lambda: drain(ANCHOR_APP, n=p["chat_anchor_tasks"], pool="prefork",
                                        concurrency=2, kind="chat", warm=2)}, repeats=1)
    return out


#: The ``allin`` scenario's budgets: a money and a tokens budget per user, per month, far
#: above what any run spends (each chat reserves ~20 tokens, ~$0.00001): never refusing.
ALLIN_BUDGETS = ('[{"period": "month", "kind": "usd", "soft": 1000000, "hard": 2000000},'
                 ' {"period": "month", "kind": "tokens", "hard": 1000000000000}]')
ALLIN_PRICES = '{"openai/bench-model": {"input": 0.15, "output": 0.6}}'


def allin(p: dict, alternate) -> dict:
    """Issue 18's features all on against all off, the chat drain (threads -c200, 200 ms
    completions, real openai SDK): history (``AIECS_HISTORY=1`` and a real ``aiecs
    recorder`` on SQLite, its CPU counted), budgets (``AIECS_BUDGETS`` with a per-user
    money and tokens budget that never refuses, ``AIECS_PRICES``) and submissions by
    template (published once before the run; every submission resolves its label and
    renders). ``off``: ``AIECS_HISTORY=0``, no budgets, the same rendered input given
    directly. Both send ``max_output_tokens: 16`` (a budget reserves it)."""
    n = p["allin_tasks"]

    def on() -> dict:
        url = f"sqlite:///{tmpdir('history') / 'history.db'}"
        return drain(AIECS_APP, n=n, kind="chat", concurrency=200, recorder=url,
                     submit={"template": True}, extra_env={
                         "AIECS_HISTORY": "1", "AIECS_DATABASE_URL": url,
                         "AIECS_BUDGETS": ALLIN_BUDGETS, "AIECS_PRICES": ALLIN_PRICES})

    return {"chat, threads -c200": alternate({
        "off": lambda: drain(AIECS_APP, n=n, kind="chat", concurrency=200,
                             submit={"max_output_tokens": 16},
                             extra_env={"AIECS_HISTORY": "0"}),
        "on": on,
    })}
