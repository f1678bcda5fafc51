"""``subscribe``: its request, its limits (a token bucket per connection, refusals with
``retry_after``) and the replay of a task's logged events in chunks, with its
acknowledgement. :class:`~.realtime.ProgressSocket` schedules replays and sends them."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiecs_core import ID_PATTERN
from pydantic import BaseModel, ConfigDict, Field

from ..ops import metrics
from ..store.events import TaskKeys
from ..store.keys import steps_key

__all__ = ["REPLAY_BATCH", "Refused", "ReplayLimits", "SubscribeRequest", "replay",
           "take_token"]

REPLAY_BATCH = 200


@dataclass(frozen=True)
class ReplayLimits:
    """Limits on ``subscribe`` (see the server settings of the same names)."""

    concurrency: int = 2
    user_concurrency: int = 4
    backlog: int = 32
    user_backlog: int = 64
    chunk: int = REPLAY_BATCH
    rate: float = 10.0
    burst: int = 40
    refusals_max: int = 100


class Refused(Exception):
    """A subscribe refused for now: the client retries after ``retry_after`` seconds."""

    def __init__(self, type_: str, message: str, retry_after: float):
        super().__init__(message)
        self.type = type_
        self.message = message
        self.retry_after = round(retry_after, 3)


class SubscribeRequest(BaseModel):
    """Payload of ``subscribe``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task_id: str = Field(pattern=ID_PATTERN)
    after_seq: int = Field(default=0, ge=0)


def take_token(conn: Any, limits: ReplayLimits) -> None:
    """``conn``'s token bucket (its ``tokens`` and ``stamp``): AIECS_SUBSCRIBE_BURST calls
    at once, refilled at AIECS_SUBSCRIBE_RATE per second; Refused when empty."""
    now = time.monotonic()
    conn.tokens = min(float(limits.burst), conn.tokens + (now - conn.stamp) * limits.rate)
    conn.stamp = now
    if conn.tokens < 1.0:
        raise Refused(
            "rate_limited",
            f"too many subscribes (limit {limits.rate:g}/s, bursts of {limits.burst})",
            retry_after=(1.0 - conn.tokens) / limits.rate)
    conn.tokens -= 1.0


async def replay(redis: Any, user_id: str, req: SubscribeRequest, chunk: int,
                 send: Callable[[list[dict[str, Any]]], Awaitable[Any]],
                 drained: Callable[[], Awaitable[bool]]) -> dict[str, Any]:
    """Send the events logged after ``req.after_seq`` in chunks of ``chunk`` (``send``),
    waiting for ``drained()`` between chunks; the acknowledgement of the subscribe."""
    keys = TaskKeys(user_id, req.task_id)
    after = req.after_seq
    first: int | None = None
    replayed = 0
    while True:
        entries = await redis.xrange(keys.log, min=f"{after + 1}-0", max="+", count=chunk)
        if not entries:
            break
        events = [json.loads(fields[b"e"]) for _, fields in entries]
        if first is None:
            first = events[0]["seq"]
        after = events[-1]["seq"]
        replayed += len(events)
        await send(events)
        if len(entries) < chunk:
            break
        if not await drained():
            return {"ok": False, "error": {"type": "disconnected",
                                           "message": "connection closed"}}
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.seq)
        pipe.smembers(steps_key(user_id, req.task_id))
        last_seq_raw, steps_raw = await pipe.execute()
    steps = sorted(int(s) for s in steps_raw)
    statuses: dict[str, str | None] = {}
    if steps:
        async with redis.pipeline(transaction=False) as pipe:
            for step in steps:
                pipe.hget(keys.state(step), "status")
            for step, status in zip(steps, await pipe.execute(), strict=True):
                statuses[str(step)] = status.decode() if status else None
    metrics.replayed(replayed)
    # the log's real end, also when the client's after_seq is past it
    last_seq = max(after if replayed else 0, int(last_seq_raw or 0))
    return {
        "ok": True,
        "task_id": req.task_id,
        "after_seq": req.after_seq,
        "replayed": replayed,
        "first_seq": first,
        "replayed_to": after,
        "last_seq": last_seq,
        "gap": first is not None and first > req.after_seq + 1,
        "exists": bool(last_seq or steps),
        "steps": statuses,
    }
