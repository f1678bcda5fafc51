"""A local OpenAI-compatible chat server with configurable latency, for load.

    python -m bench.fake_llm '{"port": 8100, "latency": 0.2, "tokens": 50, "interval": 0.02}'

``POST /v1/chat/completions`` answers after ``latency`` seconds; with ``"stream": true`` it
sends ``tokens`` SSE chunks ``interval`` seconds apart after the first ``latency``. Each
streamed token is `` @<unix time it was sent>``, so a client can tell how long each token
took to reach it. ``GET /stats`` returns requests served, the most requests in flight at
once, and ``busy``: the sum of request durations (mean in flight = Δbusy / Δtime).

One asyncio process (HTTP/1.1 keep-alive, no framework): the tests' threaded fake
(``tests/support/fake_openai.py``) checks requests thoroughly but spends a thread per
connection, too much next to 500 concurrent calls on two cores.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

STATS = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "busy": 0.0}


def _completion(model: str, text: str) -> dict:
    return {"id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


def _chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
            "model": model,
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    data = b"data: " + json.dumps(body).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _chat(writer: asyncio.StreamWriter, body: dict, cfg: dict) -> None:
    model = body.get("model", "bench")
    await asyncio.sleep(cfg["latency"])
    if not body.get("stream"):
        data = json.dumps(_completion(model, "hello from bench")).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(data), data))
        return
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n")
    writer.write(_chunk(model, {"role": "assistant", "content": ""}))
    for i in range(cfg["tokens"]):
        if i:
            await asyncio.sleep(cfg["interval"])
        writer.write(_chunk(model, {"content": f" @{time.time():.6f}"}))
        await writer.drain()
    writer.write(_chunk(model, {}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        n = cfg["tokens"]
        writer.write(_chunk(model, {}, usage={"prompt_tokens": 5, "completion_tokens": n,
                                              "total_tokens": n + 5}))
    data = b"data: [DONE]\n\n"
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: dict) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            path = line.split(b" ")[1].decode()
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            if path == "/stats":
                data = json.dumps(STATS).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(data), data))
            elif path.endswith("/chat/completions"):
                t0 = time.monotonic()
                STATS["requests"] += 1
                STATS["in_flight"] += 1
                STATS["max_in_flight"] = max(STATS["max_in_flight"], STATS["in_flight"])
                try:
                    await _chat(writer, json.loads(raw), cfg)
                finally:
                    STATS["in_flight"] -= 1
                    STATS["busy"] += time.monotonic() - t0
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(cfg: dict) -> None:
    cfg = {"latency": 0.2, "tokens": 20, "interval": 0.02, **cfg}
    server = await asyncio.start_server(lambda r, w: _serve(r, w, cfg), "127.0.0.1",
                                        cfg["port"], backlog=4096)
    async with server:
        await server.serve_forever()


def start(**cfg) -> tuple:
    """Start the server in its own process group: (process, port, base URL)."""
    from .procs import PY, free_port, spawn

    port = free_port()
    proc = spawn([PY, "-m", "bench.fake_llm", json.dumps({**cfg, "port": port})])
    deadline = time.monotonic() + 10
    while True:
        try:
            stats(port)
            return proc, port, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fake LLM server did not start") from None
            time.sleep(0.05)


def stats(port: int) -> dict:
    """The server's counters (from the orchestrator)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as reply:
        return json.loads(reply.read())


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
