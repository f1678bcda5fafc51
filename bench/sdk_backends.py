"""The openai SDK's HTTP backends, client CPU per call: httpx (the SDK's default) against
aiohttp (``DefaultAioHttpClient``), under asyncio and uvloop.

    uv run python -m bench.sdk_backends [calls] [in_flight] [repeats]

Each run reuses one ``AsyncOpenAI`` client for every call (as a worker process does),
warms it with 50 calls, then times ``calls`` non-streamed chat completions, ``in_flight``
at once, against bench/fake_llm.py (20 ms latency). CPU is the process's user + system
time per call: on a worker, that is what bounds calls per second per core. The result
decided ``AIECS_OPENAI_HTTP``'s default (aiecs_openai_compat/http.py). The ``aiecs``
backend makes the same calls through aiecs's ``llm/openai`` ``chat`` operation (on the
SDK's aiohttp client, its default): the provider plugin's own cost per call.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

from bench import fake_llm
from bench.procs import stop


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _timed(one, calls: int) -> dict:
    """50 warm-up calls of ``one``, then ``calls`` timed: client CPU ms per call, calls/s."""
    await asyncio.gather(*[one() for _ in range(50)])
    c0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*[one() for _ in range(calls)])
    c1, t1 = _cpu(), time.perf_counter()
    return {"cpu_ms_per_call": 1000 * (c1 - c0) / calls, "calls_per_s": calls / (t1 - t0)}


async def _run_aiecs(base_url: str, calls: int, in_flight: int) -> dict:
    """The same calls through aiecs's ``llm/openai`` ``chat`` operation (its input model,
    the SDK on its default HTTP client, the response made into aiecs's result and usage),
    as the runner invokes it, without the runner: what the provider plugin adds to the SDK."""
    import os

    from aiecs_core import OperationContext, TaskRequest, load_plugins
    from aiecs_core.service import invoke_operation

    os.environ.update(OPENAI_API_KEY="sk-bench-0123456789", OPENAI_BASE_URL=base_url)
    registry = load_plugins()
    spec = registry.operation("llm", "openai", "chat")
    service = registry.instance("llm", "openai")
    data = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_output_tokens": 16}
    request = TaskRequest(task_name="chat", user_id="bench", task_id="t", step=1, mode="llm",
                          service="openai", input_data=data, context={})
    sem = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with sem:
            ctx = OperationContext(request)
            ctx.emit = lambda *a, **k: None  # events: the runner's part, not measured here
            await invoke_operation(service, spec, ctx, spec.input_model.model_validate(data))

    try:
        return await _timed(one, calls)
    finally:
        await service.aclose()


async def _run(backend: str, base_url: str, calls: int, in_flight: int) -> dict:
    if backend == "aiecs":
        return await _run_aiecs(base_url, calls, in_flight)
    import openai

    kw = {"http_client": openai.DefaultAioHttpClient()} if backend == "aiohttp" else {}
    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=base_url, max_retries=0, **kw)
    sem = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with sem:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}],
                max_completion_tokens=16)

    try:
        return await _timed(one, calls)
    finally:
        await client.close()


def main(calls: int = 2000, in_flight: int = 100, repeats: int = 3) -> list[dict]:
    import uvloop

    proc, _port, base_url = fake_llm.start(latency=0.02)
    out = []
    try:
        for rep in range(repeats):
            for backend in ("httpx", "aiohttp", "aiecs"):
                for loop in ("asyncio", "uvloop"):
                    run = uvloop.run if loop == "uvloop" else asyncio.run
                    r = run(_run(backend, base_url, calls, in_flight))
                    out.append({"repeat": rep, "backend": backend, "loop": loop, **r})
                    print(json.dumps(out[-1]), flush=True)
    finally:
        stop(proc)
    return out


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
