"""The producer of a run (a child process, so each run imports its app with that run's
Redis URL): warms the workers up, says ``ready``, waits for ``go``, then submits ``n``
tasks (all at once, or paced at ``rate`` per second) and waits for every result (with
``"wait": false``, only submits: the submission-rate scenario, no worker running).

aiecs tasks go through ``execute_task.delay`` (so the producer's own work, the PENDING
record and event, is counted); anchor tasks through the bare app's ``.delay``.

    python -m bench.submit '{"app": "aiecs", "kind": "noop", "n": 2000}'
"""

from __future__ import annotations

import json
import sys
import time

from .procs import child_io, cpu_self

MODEL = {"model": "bench-model", "messages": [{"role": "user", "content": "hello"}]}

#: The ``all-in`` scenario's template (published by the producer before ``ready``): it
#: renders to ``{**MODEL, "max_output_tokens": 16}``, the input of the run without it.
TEMPLATE = {"mode": "llm", "service": "openai", "operation": "chat",
            "input": {"messages": [{"role": "user", "content": "{{text}}"}],
                      "max_output_tokens": "{{max_tokens}}"},
            "variables_schema": {"type": "object", "required": ["text"], "properties": {
                "text": {"type": "string"}, "max_tokens": {"type": "integer", "default": 16}}},
            "defaults": {"model": "bench-model"}, "description": "bench: all-in chat"}


def _publish_template() -> None:
    """Publish :data:`TEMPLATE` as ``bench-chat`` and point ``production`` at it (in the
    run's own history database, AIECS_DATABASE_URL): once, before the timed part."""
    from aiecs_history import templates as store
    from aiecs_worker.history.engine import engine

    version, _ = store.publish(engine(), "bench-chat", TEMPLATE, created_by="bench")
    store.move_label(engine(), "bench-chat", "production", version.version,
                     expected_version=None, moved_by="bench")


def _task(app: str, kind: str):
    """(task, mode, service, task_name, input_data) of one run."""
    if app == "anchor":
        from . import anchor_app

        task = anchor_app.chat if kind == "chat" else anchor_app.noop
        return task, "test", "echo", "echo", (MODEL if kind == "chat" else {"text": "hi"})
    from aiecs_worker import execute_task

    if kind in ("noop", "batch"):
        return execute_task, "test", "echo", "echo", {"text": "hello world", "chunks": 1}
    return execute_task, "llm", "openai", "chat", {**MODEL, "stream": kind == "stream"}


def _submit_batch(n: int, mode: str, service: str, name: str, data: dict
                  ) -> tuple[float, int]:
    """``n`` items as one batch, then wait for the batch's own counters to say every item
    ended (as a batch's client does: GET /batches/{id}); (seconds the submission took,
    how many items did not complete).

    (Collecting 10,000 Celery results one ``AsyncResult.get`` at a time would time the
    collection, not the drain: the single submissions' results stream in through the
    subscriptions ``delay`` opened.)"""
    from aiecs_worker import submit_batch
    from aiecs_worker.store.keys import batch_key
    from aiecs_worker.store.records import state_redis

    item = {"mode": mode, "service": service, "task_name": name, "input_data": data}
    t0 = time.perf_counter()
    out = submit_batch("u0", [item] * n)
    submit_s = time.perf_counter() - t0
    client, key = state_redis(), batch_key("u0", out["batch_id"])
    while int(client.hget(key, "done") or 0) < n:
        time.sleep(0.02)
    return submit_s, n - int(client.hget(key, "completed") or 0)


def main(cfg: dict) -> None:
    ready, wait, result = child_io()
    task, mode, service, name, data = _task(cfg["app"], cfg.get("kind", "noop"))
    users = cfg.get("users", 1)
    prefix = cfg.get("prefix", "b")
    # for all results, from the last submit
    timeout = cfg.get("timeout", max(180, cfg["n"] // 10))

    if cfg.get("max_output_tokens"):
        data = {**data, "max_output_tokens": cfg["max_output_tokens"]}
    if cfg.get("template"):  # the same input, rendered from a template at each submission
        _publish_template()
        fields = {"template": {"name": "bench-chat", "label": "production"},
                  "variables": {"text": "hello"}}
    else:
        fields = {"task_name": name, "mode": mode, "service": service, "input_data": data}

    def submit(i: int, tag: str):
        return task.delay(user_id=f"u{i % users}", task_id=f"{prefix}{tag}{i}", step=1,
                          context={}, **fields)

    warm = [submit(i, "w") for i in range(cfg.get("warm", 4))]
    for r in warm if cfg.get("wait", True) else []:  # no worker: only the submissions warm
        r.get(timeout=120)
    if cfg.get("kind") == "batch":
        from aiecs_core import load_plugins

        load_plugins()  # a batch validates its items: the plugins load once, not timed
    ready()
    wait()
    n, rate = cfg["n"], cfg.get("rate")
    cpu0, t0 = cpu_self(), time.perf_counter()
    pending = []
    if cfg.get("kind") == "batch":  # one call: aiecs_worker.submit_batch
        submit_s, failed = _submit_batch(n, mode, service, name, data)
        t2 = time.perf_counter()
        result({"tasks": n, "failed": failed, "submit_s": submit_s, "seconds": t2 - t0,
                "per_s": n / (t2 - t0), "client_cpu": cpu_self() - cpu0})
        return
    for i in range(n):
        if rate:
            lag = t0 + i / rate - time.perf_counter()
            if lag > 0:
                time.sleep(lag)
        pending.append(submit(i, "t"))
    t1 = time.perf_counter()
    failed, deadline = 0, time.monotonic() + timeout
    for r in pending if cfg.get("wait", True) else []:
        try:
            r.get(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - counted and reported, the run goes on
            failed += 1
    t2 = time.perf_counter()
    result({"tasks": n, "failed": failed, "submit_s": t1 - t0, "seconds": t2 - t0,
            "per_s": n / (t2 - t0), "client_cpu": cpu_self() - cpu0})


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
