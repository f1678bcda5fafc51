"""The HTTP submitter of the submission scenario: ``n`` ``POST /tasks`` to a real ``aiecs
serve``, ``concurrency`` at once over keep-alive connections (one aiohttp session), each
user's bearer token issued once. Says ``ready`` after a warm-up, waits for ``go``.

    python -m bench.http_submit '{"url": "http://127.0.0.1:8000", "n": 3000, "users": 30,
                                  "secret": "...", "concurrency": 32}'
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from .procs import child_io, cpu_self

BODY = {"mode": "test", "service": "echo", "task_name": "echo",
        "input_data": {"text": "hello world", "chunks": 1}}


async def run(cfg: dict) -> None:
    import aiohttp
    from aiecs_worker.server.tokens import issue_token

    ready, wait, result = child_io()
    users = cfg.get("users", 1)
    headers = [{"Authorization": "Bearer " + issue_token(f"u{u}", cfg["secret"], ttl=3600)}
               for u in range(users)]
    url = cfg["url"] + "/tasks"
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=cfg.get("concurrency", 32))
    async with aiohttp.ClientSession(connector=connector) as session:
        async def post(i: int, prefix: str) -> None:
            body = {**BODY, "task_id": f"{prefix}{i}"}
            async with session.post(url, json=body, headers=headers[i % users]) as reply:
                await reply.read()
                statuses[reply.status] = statuses.get(reply.status, 0) + 1

        async def many(count: int, prefix: str) -> None:
            queue = iter(range(count))

            async def lane() -> None:
                for i in queue:
                    await post(i, prefix)

            await asyncio.gather(*[lane() for _ in range(cfg.get("concurrency", 32))])

        await many(cfg.get("warm", 20), "hw")
        statuses.clear()
        ready()
        await asyncio.get_running_loop().run_in_executor(None, wait)
        n = cfg["n"]
        cpu0, t0 = cpu_self(), time.perf_counter()
        await many(n, "ht")
        t1 = time.perf_counter()
    result({"tasks": n, "failed": n - statuses.get(202, 0), "statuses": statuses,
            "submit_s": t1 - t0, "seconds": t1 - t0, "per_s": n / (t1 - t0),
            "client_cpu": cpu_self() - cpu0})


if __name__ == "__main__":
    asyncio.run(run(json.loads(sys.argv[1])))
