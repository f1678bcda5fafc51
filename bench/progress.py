"""Progress path scenarios: events from a producer to many Socket.IO clients.

Scenario 4 (``progress``): ``sockets`` clients connected (one user each), tasks at ``rate``
per second for ``seconds``, round-robin over the users. aiecs: echo no-op tasks through a
threads worker and the progress server (``aiecs serve``); each task's events (PENDING from
the producer, then the worker's) go to its user's room. Anchor: plain python-socketio
(``bench.plain_sio``) fed by ``AsyncRedisManager(write_only=True)`` emitting as many
events per task, of the same shape and size as an aiecs echo task's
(``bench.clients._like_aiecs``). Relay: the same plain python-socketio server fed by the
aiecs worker, so that it and ``aiecs serve`` relay one kind of event stream: a real
worker's events of a task arrive spread over its run (PENDING at submit, RUNNING, ...,
COMPLETED), the emitter's back to back, and each separate arrival costs a server a wake-up
(measured, full report of 2026-11-26: the plain server spent 157 µs per event on the
emitter's stream, 178 µs on the worker's, medians of 3). The server-CPU target compares
aiecs with the relay. Latency is the client's receive time minus the event's
``timestamp`` (emit → client); a Redis subscriber on the manager channel in this process
times emit → Redis the same way.

Scenario 6 (``streaming``): ``streams`` concurrent streamed chats through aiecs, each
delivered to its user's socket: tokens/s reaching the clients and each token's latency
from the moment the LLM server sent it; the direct openai-SDK reader of the same streams
is the floor, so ``added`` = aiecs − direct.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

from . import fake_llm
from .procs import (
    AIECS_APP,
    PY,
    Child,
    Redis,
    Worker,
    base_env,
    free_port,
    group_cpu,
    spawn,
    stop,
    tmpdir,
    wait_ready,
)

SECRET = "bench-secret-" + "x" * 40
CHANNEL = "socketio"


def _http_ready(url: str, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server at {url} did not start") from None
            time.sleep(0.1)


def _server(kind: str, redis_url: str):
    port = free_port()
    log = tmpdir("server") / "server.log"
    env = base_env(REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url, AIECS_SECRET_KEY=SECRET,
                   BENCH_REDIS_URL=redis_url, BENCH_SECRET=SECRET)
    if kind == "aiecs":
        cmd = [PY, "-m", "aiecs_worker.cli", "serve", "--port", str(port),
               "--log-level", "warning"]
        health = f"http://127.0.0.1:{port}/healthz"
    else:
        cmd = [PY, "-m", "uvicorn", "bench.plain_sio:app", "--port", str(port),
               "--log-level", "warning"]
        health = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    proc = spawn(cmd, env=env, log=log)
    _http_ready(health, proc)
    return proc, f"http://127.0.0.1:{port}"


class RedisProbe:
    """Times emit → Redis: subscribes to the manager channel, reads each packet's
    ``data.timestamp``."""

    def __init__(self, redis: Redis):
        self.pubsub = redis.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(CHANNEL)
        self.lags: list[float] = []
        self.on = False
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            msg = self.pubsub.get_message(timeout=0.1)
            if msg and self.on:
                now = time.time()
                try:
                    data = json.loads(msg["data"]).get("data")
                    if isinstance(data, list):  # python-socketio sends emit arguments
                        data = data[0]
                    self.lags.append(now - data["timestamp"])
                except (ValueError, TypeError, KeyError, AttributeError):
                    pass

    def p50_ms(self) -> float | None:
        lags = sorted(self.lags)
        return 1000 * lags[len(lags) // 2] if lags else None

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.pubsub.close()


def _run_progress(kind: str, p: dict) -> dict:
    redis = Redis().start()
    server = worker = clients = producer = probe = None
    try:
        n = int(p["progress_rate"] * p["progress_seconds"])
        redis_env = base_env(CELERY_BROKER_URL=redis.url, REDIS_URL=redis.url)
        from_worker = kind in ("aiecs", "relay")  # else the anchor's emitter
        if from_worker:
            worker = Worker(AIECS_APP, redis.url, "threads", 8).start()
            wait_ready(redis.url, [worker])
        server, url = _server("aiecs" if kind == "aiecs" else "plain", redis.url)
        clients = Child("bench.clients", {"mode": "sockets", "url": url, "secret": SECRET,
                                          "sockets": p["sockets"], "users": p["sockets"]})
        if from_worker:
            producer = Child("bench.submit", {"app": "aiecs", "kind": "noop", "n": n,
                                              "rate": p["progress_rate"],
                                              "users": p["sockets"]}, env=redis_env)
        else:
            producer = Child("bench.clients", {"mode": "emitter", "redis_url": redis.url,
                                               "n": n, "rate": p["progress_rate"],
                                               "events": p["events_per_task"],
                                               "users": p["sockets"]})
        clients.ready()
        producer.ready()
        probe = RedisProbe(redis)
        cpu0 = group_cpu(server.pid)
        probe.on = True
        clients.go()
        producer.go()
        res = producer.result(timeout=300)
        time.sleep(0.5)  # the last events' way to the clients
        probe.on = False
        clients.go("stop")
        got = clients.result(timeout=60)
        server_cpu = group_cpu(server.pid) - cpu0
        return {**got, "emit_redis_p50_ms": probe.p50_ms(), "tasks": n,
                "tasks_per_s": n / res["seconds"], "events_per_s": got["events"] / res["seconds"],
                "server_cpu_us_per_event": 1e6 * server_cpu / max(1, got["events"])}
    finally:
        for c in (probe, clients, producer, worker):
            if c:
                c.close()
        if server:
            stop(server)
        redis.close()


def progress(p: dict, alternate) -> dict:
    return {f"{p['sockets']} sockets, {p['progress_rate']} tasks/s": alternate({
        "aiecs": lambda: _run_progress("aiecs", p),
        "anchor": lambda: _run_progress("plain", p),
        "relay": lambda: _run_progress("relay", p),
    })}


def _run_streaming(kind: str, p: dict) -> dict:
    redis = Redis().start()
    llm = server = worker = clients = producer = None
    try:
        llm, _, base_url = fake_llm.start(latency=0.2, tokens=p["stream_tokens"],
                                          interval=p["stream_interval"])
        if kind == "direct":
            producer = Child("bench.clients", {"mode": "direct", "base_url": base_url,
                                               "streams": p["streams"]})
            producer.ready()
            producer.go()
            return producer.result(timeout=300)
        env = {"OPENAI_API_KEY": "sk-bench-0123456789", "OPENAI_BASE_URL": base_url}
        worker = Worker(AIECS_APP, redis.url, "threads", max(8, p["streams"] + 8), env).start()
        wait_ready(redis.url, [worker])
        server, url = _server("aiecs", redis.url)
        clients = Child("bench.clients", {"mode": "sockets", "url": url, "secret": SECRET,
                                          "sockets": p["streams"], "users": p["streams"]})
        producer = Child("bench.submit", {"app": "aiecs", "kind": "stream", "n": p["streams"],
                                          "users": p["streams"], "warm": 1},
                         env=base_env(CELERY_BROKER_URL=redis.url, REDIS_URL=redis.url, **env))
        clients.ready()
        producer.ready()
        clients.go()
        producer.go()
        res = producer.result(timeout=300)
        time.sleep(0.3)
        clients.go("stop")
        return {**clients.result(timeout=60), "failed": res["failed"]}
    finally:
        for c in (clients, producer, worker):
            if c:
                c.close()
        for proc in (server, llm):
            if proc:
                stop(proc)
        redis.close()


def streaming(p: dict, alternate) -> dict:
    return {f"{p['streams']} streams": alternate({
        "aiecs": lambda: _run_streaming("aiecs", p),
        "anchor": lambda: _run_streaming("direct", p),
    })}
