"""Measuring clients (child processes speaking the ready / go / result line protocol).

``sockets``: N python-socketio AsyncClients (websocket transport, authenticated with a
token from ``aiecs_worker.server.tokens``), one user room each unless ``users`` < N. Between
``go`` and ``stop`` every ``task_event`` is timed against the ``timestamp`` it carries
(emit → client) and streamed tokens (`` @<sent time>``, see ``bench.fake_llm``) against
the time the LLM server sent them.

``direct``: the floor for streaming: N concurrent streams read straight from the LLM server
with the openai SDK, timed the same way.

``emitter``: the plain python-socketio anchor's producer: ``socketio.AsyncRedisManager``
(write_only) emitting ``task_event`` to user rooms, ``events`` per task at ``rate`` tasks/s.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

from .procs import child_io

TOKEN = re.compile(r"@(\d+\.\d+)")


class Timings:
    def __init__(self) -> None:
        self.on = False
        self.events: list[float] = []
        self.tokens: list[float] = []
        self.first = self.last = 0.0

    def event(self, data: dict) -> None:
        if not self.on:
            return
        now = time.time()
        self.events.append(now - data["timestamp"])
        if data.get("type") == "stream" and data.get("delta"):
            self.text(data["delta"], now)

    def text(self, text: str, now: float) -> None:
        sent = [float(t) for t in TOKEN.findall(text)]
        if sent:
            self.first = self.first or now
            self.last = now
            self.tokens.extend(now - t for t in sent)

    def summary(self) -> dict:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            values = sorted(values)
            return 1000 * values[min(len(values) - 1, int(q * len(values)))]

        span = self.last - self.first
        return {"events": len(self.events), "p50_ms": pct(self.events, 0.5),
                "p99_ms": pct(self.events, 0.99), "max_ms": pct(self.events, 1.0),
                "tokens": len(self.tokens), "tokens_per_s": len(self.tokens) / span if span
                else None, "token_p50_ms": pct(self.tokens, 0.5),
                "token_p99_ms": pct(self.tokens, 0.99)}


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def sockets(cfg: dict) -> None:
    import socketio
    from aiecs_worker.server.tokens import issue_token

    ready, _, result = child_io()
    timings = Timings()
    clients = []

    async def connect(i: int) -> None:
        client = socketio.AsyncClient(reconnection=False)
        client.on("task_event", timings.event)
        token = issue_token(f"u{i % cfg['users']}", cfg["secret"], ttl=3600)
        await client.connect(cfg["url"], auth={"token": token}, transports=["websocket"],
                             wait_timeout=30)
        clients.append(client)

    for start in range(0, cfg["sockets"], 50):
        await asyncio.gather(*(connect(i) for i in range(start, min(cfg["sockets"],
                                                                     start + 50))))
    ready()
    await _stdin_line()  # go
    timings.on = True
    await _stdin_line()  # stop
    timings.on = False
    out = timings.summary() | {"connected": sum(c.connected for c in clients)}
    result(out)
    await asyncio.wait_for(asyncio.gather(*(c.disconnect() for c in clients),
                                          return_exceptions=True), 10)


async def direct(cfg: dict) -> None:
    from openai import AsyncOpenAI

    ready, _, result = child_io()
    timings = Timings()
    client = AsyncOpenAI(api_key="sk-bench", base_url=cfg["base_url"])

    async def one() -> None:
        stream = await client.chat.completions.create(
            model="bench-model", messages=[{"role": "user", "content": "hi"}], stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                timings.text(chunk.choices[0].delta.content, time.time())

    await one()  # warm-up
    ready()
    await _stdin_line()
    timings.on = True
    await asyncio.gather(*(one() for _ in range(cfg["streams"])))
    result(timings.summary())
    await client.close()


def _like_aiecs(task_id: str, user_id: str, k: int) -> dict:
    """The ``k``-th event of an aiecs echo task, as its worker publishes it (PENDING,
    RUNNING, the streamed chunk, progress, COMPLETED with result and usage), so that the
    anchor server relays payloads of the same size and shape as the aiecs server does."""
    from aiecs_core import TaskEvent, Usage

    base = {"task_id": task_id, "step": 1, "user_id": user_id, "task_name": "echo",
            "seq": k + 1}
    kinds = [
        {"type": "status", "status": "pending", "message": "queued"},
        {"type": "status", "status": "running", "message": "started"},
        {"type": "stream", "status": "running", "delta": "hello world"},
        {"type": "progress", "status": "running", "progress": 1.0, "message": "chunk 1/1"},
        {"type": "status", "status": "completed", "message": "completed", "progress": 1.0,
         "result": {"text": "hello world", "chunks": 1},
         "usage": [Usage(provider="echo", model="echo-1", input_tokens=2,
                         output_tokens=2)]},
    ]
    return TaskEvent(**base, **kinds[k % len(kinds)]).model_dump(mode="json")


async def emitter(cfg: dict) -> None:
    import socketio

    ready, _, result = child_io()
    manager = socketio.AsyncRedisManager(cfg["redis_url"], write_only=True)
    await manager.emit("task_event", {"timestamp": time.time()}, room="user:warm")
    ready()
    await _stdin_line()
    t0, sent = time.perf_counter(), 0
    for i in range(cfg["n"]):
        lag = t0 + i / cfg["rate"] - time.perf_counter()
        if lag > 0:
            await asyncio.sleep(lag)
        user = f"u{i % cfg['users']}"
        for k in range(cfg["events"]):
            event = _like_aiecs(f"b{i}", user, k)
            event["timestamp"] = time.time()
            await manager.emit("task_event", event, room=f"user:{user}")
            sent += 1
    result({"tasks": cfg["n"], "events": sent, "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    asyncio.run({"sockets": sockets, "direct": direct, "emitter": emitter}[config["mode"]](config))
