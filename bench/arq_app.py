"""The arq anchor (issue 20): arq, the asyncio-native Redis queue, configured as its best
user would for I/O-bound AI calls: ``max_jobs`` 500 per worker, one reused ``AsyncOpenAI``
client per worker with the SDK's aiohttp HTTP client (its fastest, see bench/sdk_backends.py),
uvloop (as the aiecs worker runs). It runs in its own environment, bench/arq_env (arq pins
redis<6), started by the bench as

    bench/arq_env/.venv/bin/python -m bench.arq_app

``REDIS_URL`` names the run's Redis. Each worker adds 1 to ``bench:arq:ready`` once started,
so that the bench measures only after every worker is up. arq's defaults otherwise: results
kept (``keep_result`` 1 h; the producer reads them, as ``AsyncResult.get`` does Celery's),
polling the queue every 0.5 s for as many jobs as it has free slots.
"""

from __future__ import annotations

import os

from arq.connections import RedisSettings

MAX_JOBS = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "500"))
READY_KEY = "bench:arq:ready"


async def startup(ctx: dict) -> None:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    if os.environ.get("OPENAI_BASE_URL"):
        ctx["client"] = AsyncOpenAI(api_key=os.environ["OPENAI_API_KEY"],
                                    base_url=os.environ["OPENAI_BASE_URL"],
                                    http_client=DefaultAioHttpClient())
    await ctx["redis"].incr(READY_KEY)


async def shutdown(ctx: dict) -> None:
    if "client" in ctx:
        await ctx["client"].close()


async def chat(ctx: dict, model: str, messages: list) -> dict:
    reply = await ctx["client"].chat.completions.create(model=model, messages=messages)
    return {"text": reply.choices[0].message.content}


async def noop(ctx: dict, **kwargs) -> dict:
    return {"ok": True}


def redis_settings() -> RedisSettings:
    return RedisSettings.from_dsn(os.environ["REDIS_URL"])


class WorkerSettings:
    functions = [chat, noop]
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = MAX_JOBS
    redis_settings = redis_settings()
    handle_signals = True


def main() -> None:
    import asyncio

    import uvloop
    from arq.worker import create_worker

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    create_worker(WorkerSettings).run()


if __name__ == "__main__":
    main()
