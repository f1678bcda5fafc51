"""The worker's loop is uvloop's, whose timers may fire up to a millisecond early: a wait
that is a floor (a provider's Retry-After) must not end early on it."""

from __future__ import annotations

import time

from aiecs_worker.runner.runtime import _new_event_loop, sleep_at_least


def test_sleep_at_least_never_ends_early_on_the_workers_loop():
    loop = _new_event_loop()

    async def shortfalls() -> list[float]:
        out = []
        for i in range(120):
            wanted = 0.0102 + (i % 7) * 0.0003  # not whole milliseconds
            start = time.monotonic()
            await sleep_at_least(wanted)
            out.append(wanted - (time.monotonic() - start))
        return out

    try:
        short = loop.run_until_complete(shortfalls())
    finally:
        loop.close()
    assert max(short) <= 0, f"{sum(s > 0 for s in short)} of {len(short)} sleeps ended early"
    assert min(short) > -0.05  # and not much late either


def test_the_workers_loop_is_uvloops():
    loop = _new_event_loop()
    try:
        # uvloop comes with the worker (uvicorn[standard]); asyncio's loop is the fallback
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
