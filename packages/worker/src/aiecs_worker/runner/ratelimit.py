"""Cluster-wide rate limits per (provider, model), enforced through Redis.

Provider quotas are global (requests and tokens per minute for an API key), while
Celery's ``rate_limit`` is per worker (celery#5732). So every worker process, on every
host, counts against the same Redis keys, with an atomic Lua script per decision.

Configuration, ``AIECS_RATE_LIMITS`` (JSON)::

    {"openai/gpt-4o-mini": {"rpm": 500, "tpm": 200000},
     "vertex/*":           {"rpm": 60},
     "xai/*":              {}}

- Keys are ``provider/model`` as a service's :meth:`~aiecs_core.Service.rate_limit_key`
  returns them. The model comes from the user's request, so it is normalised (surrounding
  whitespace stripped, case folded) before it is looked up, and a model without an entry
  of its own falls under ``provider/*``, which is **one budget shared** by all those
  models: another spelling of a model (a trailing space, a dated suffix, an alias)
  cannot open a fresh budget. To bound a provider, give it a ``provider/*`` entry; a
  model without an entry and without a ``provider/*`` entry is not limited.
- ``rpm``: requests per window; ``tpm``: tokens per window (the call's estimate, settled
  to the usage it actually recorded); either may be omitted. ``window`` is the window in
  seconds (default 60; shorter windows are for tests).
- An entry, even ``{}``, also shares 429 back-off: a provider's ``Retry-After`` pauses the
  key for every worker until then.

Algorithm: a sliding-window log. Each admitted call is a member ``<id>:<tokens>`` of a
sorted set scored by Redis server time (``TIME``: one clock for all hosts), with the
window's token sum beside it. A call is admitted when, within the last ``window``, fewer
than ``rpm`` calls and at most ``tpm - tokens`` tokens were admitted; otherwise the
script answers how long until enough expires, and the caller sleeps that long (reporting
"waiting for rate-limit capacity") and asks again. Unlike a token bucket, no window of
that length ever holds more than ``rpm`` calls.

A Redis failure never stops calls: the limiter lets them through and logs the outage once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiecs_core import RateLimitError, RateLimitKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..ops import metrics
from ..settings import config_error, load_settings
from ..store.keys import rate_limit_base

__all__ = [
    "RATE_LIMITS_ENV",
    "Limit",
    "RateLimiter",
    "Reservation",
    "limited_call",
    "parse_limits",
]

log = logging.getLogger("aiecs.ratelimit")

#: Environment variable holding the limits (JSON, see the module docstring).
RATE_LIMITS_ENV = "AIECS_RATE_LIMITS"

T = TypeVar("T")


class Limit(BaseModel):
    """The limits of one ``provider/model`` key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(default=None, gt=0)
    """Requests per window (None: not limited)."""
    tpm: int | None = Field(default=None, gt=0)
    """Tokens per window (None: not limited)."""
    window: float = Field(default=60.0, gt=0, le=86_400)
    """Window length in seconds."""


def parse_limits(raw: str | None) -> dict[str, Limit]:
    """Parse ``AIECS_RATE_LIMITS``; raise ConfigurationError naming the variable."""
    if raw is None or not raw.strip():
        return {}
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("must be a JSON object of 'provider/model': {rpm, tpm, window}")
        limits: dict[str, Limit] = {}
        for key, value in data.items():
            provider, sep, model = str(key).partition("/")
            if not (provider and sep and model):
                raise ValueError(f"key {key!r} must be 'provider/model' or 'provider/*'")
            limits[key] = Limit.model_validate(value)
        return limits
    except (ValueError, ValidationError) as exc:
        detail = exc.errors(include_url=False) if isinstance(exc, ValidationError) else exc
        raise config_error(RATE_LIMITS_ENV, f"is invalid: {detail}", value=raw,
                           fix=f"correct {RATE_LIMITS_ENV} (see the worker README, "
                               "\"Rate limits\"), or unset it for no limits") from None


def _normalise(key: str) -> str:
    """``provider/model`` as looked up: each part stripped and case-folded."""
    provider, _, model = key.partition("/")
    return f"{provider.strip().casefold()}/{model.strip().casefold()}"


# KEYS: log (zset), sum (string), block (string).
# ARGV: window ms, rpm (0: none), tpm (0: none), tokens, member id.
# Returns 0 when admitted (the member was added), else milliseconds to wait.
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local blocked = tonumber(redis.call('GET', KEYS[3]) or '0')
if blocked > now then
  return blocked - now
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #expired > 0 then
  local freed = 0
  for _, m in ipairs(expired) do
    freed = freed + tonumber(string.match(m, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('DECRBY', KEYS[2], freed)
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  redis.call('PEXPIRE', KEYS[2], window + 1000)
end
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if count == 0 and used ~= 0 then
  used = 0
  redis.call('DEL', KEYS[2])
end
local wait = 0
if rpm > 0 and count >= rpm then
  local e = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
  wait = math.max(wait, tonumber(e[2]) + window - now)
end
if tpm > 0 then
  local need = math.min(tokens, tpm)
  local excess = used + need - tpm
  if excess > 0 then
    local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    local freed = 0
    for i = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
      if freed >= excess then
        wait = math.max(wait, tonumber(entries[i + 1]) + window - now)
        break
      end
    end
  end
end
if wait > 0 then
  return math.max(1, wait)
end
redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. tokens)
redis.call('INCRBY', KEYS[2], tokens)
redis.call('PEXPIRE', KEYS[1], window + 1000)
redis.call('PEXPIRE', KEYS[2], window + 1000)
return 0
"""

# KEYS: log, sum.  ARGV: member id, old tokens, new tokens, window ms.
# (ZREM of the last member deletes the log and ZADD makes it again: every key written
# gets its expiry back.)
SETTLE_LUA = """
local old = ARGV[1] .. ':' .. ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], old)
if not score then
  return 0
end
redis.call('ZREM', KEYS[1], old)
redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. ARGV[3])
redis.call('INCRBY', KEYS[2], tonumber(ARGV[3]) - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) + 1000)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) + 1000)
return 1
"""

# KEYS: block.  ARGV: pause ms.  Returns the pause's end (ms, server time).
PENALIZE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(ARGV[1])
local until_ms = now + pause
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], until_ms, 'PX', pause + 1000)
  return until_ms
end
return current
"""


@dataclass(frozen=True)
class Reservation:
    """An admitted call: its key, member id and the tokens it reserved."""

    key: RateLimitKey
    member: str
    tokens: int


class RateLimiter:
    """Admits calls per ``provider/model`` across all workers sharing one Redis."""

    def __init__(self, redis: Any, limits: dict[str, Limit], *, prefix: str = "aiecs"):
        self.redis = redis
        self.limits = {_normalise(k): v for k, v in limits.items()}
        self.prefix = prefix
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._settle = redis.register_script(SETTLE_LUA)
        self._penalize = redis.register_script(PENALIZE_LUA)
        self._down = False

    @classmethod
    def from_env(cls, redis: Any, *, prefix: str = "aiecs") -> RateLimiter | None:
        """A limiter for ``AIECS_RATE_LIMITS``, or None when it is unset or empty."""
        limits = parse_limits(load_settings().aiecs_rate_limits)
        return cls(redis, limits, prefix=prefix) if limits else None

    def bucket(self, key: RateLimitKey) -> str | None:
        """The entry ``key`` counts against: ``provider/model`` (normalised) when it has
        one, else ``provider/*`` (shared by every model without an entry), else None."""
        exact = _normalise(f"{key.provider}/{key.model}")
        if exact in self.limits:
            return exact
        wildcard = _normalise(f"{key.provider}/*")
        return wildcard if wildcard in self.limits else None

    def limit_for(self, key: RateLimitKey) -> Limit | None:
        bucket = self.bucket(key)
        return None if bucket is None else self.limits[bucket]

    def _keys(self, key: RateLimitKey) -> list[str]:
        # The hash tag keeps a key's three entries in one Redis Cluster slot. The bucket
        # is a configured entry (never the user's spelling): keys are bounded in number.
        base = rate_limit_base(self.bucket(key), self.prefix)
        return [f"{base}:log", f"{base}:tokens", f"{base}:pause"]

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._down:
            log.warning("rate limiter: %s failed, letting calls through until Redis is "
                        "back: %s", what, exc)
            self._down = True

    def _recovered(self) -> None:
        if self._down:
            log.warning("rate limiter: Redis is back")
            self._down = False

    async def acquire(
        self,
        key: RateLimitKey,
        *,
        deadline: float | None = None,
        on_wait: Callable[[float], None] | None = None,
        report_every: float = 5.0,
    ) -> Reservation | None:
        """Wait until ``key`` has capacity for one call of ``key.tokens``; admit it.

        ``deadline`` is a ``time.monotonic()`` value: when capacity will not come before
        it, a non-retryable :class:`RateLimitError` is raised instead of waiting.
        ``on_wait(seconds)`` is called when waiting starts and then every
        ``report_every`` seconds. Returns None when the key has no configured limit (or
        Redis is unreachable).
        """
        limit = self.limit_for(key)
        if limit is None:
            return None
        member = uuid.uuid4().hex
        tokens = int(key.tokens)
        keys = self._keys(key)
        args = [int(limit.window * 1000), limit.rpm or 0, limit.tpm or 0, tokens, member]
        last_report: float | None = None
        while True:
            try:
                wait_ms = int(await self._acquire(keys=keys, args=args))
            except Exception as exc:  # noqa: BLE001 - never stop calls because of Redis
                self._failed("acquire", exc)
                return None
            self._recovered()
            if wait_ms <= 0:
                return Reservation(key, member, tokens)
            wait = wait_ms / 1000.0
            now = time.monotonic()
            if deadline is not None and now + wait >= deadline:
                raise RateLimitError(
                    f"rate limit {key}: no capacity before the task's deadline "
                    f"(next in {wait:.1f}s; {RATE_LIMITS_ENV})",
                    provider=key.provider,
                    model=key.model,
                    retry_after=wait,
                    retryable=False,
                    local=True,
                )
            if on_wait is not None and (last_report is None or now - last_report >= report_every):
                last_report = now
                on_wait(wait)
            # Sleep until capacity frees up (re-checking at least every 5 s, as a 429 may
            # have paused the key meanwhile); jitter spreads workers that wait together.
            pause = min(wait, 5.0) + random.uniform(0.0, 0.02)
            metrics.rate_limit_wait(key.provider, pause)
            await asyncio.sleep(pause)

    async def settle(self, reservation: Reservation | None, tokens: int) -> None:
        """Replace a reservation's estimated tokens with what the call actually used."""
        if reservation is None or tokens == reservation.tokens:
            return
        limit = self.limit_for(reservation.key)
        if limit is None:
            return
        keys = self._keys(reservation.key)[:2]
        try:
            await self._settle(
                keys=keys, args=[reservation.member, reservation.tokens, max(0, int(tokens)),
                                 int(limit.window * 1000)]
            )
        except Exception as exc:  # noqa: BLE001
            self._failed("settle", exc)

    async def penalize(self, key: RateLimitKey, retry_after: float) -> None:
        """Pause ``key`` for every worker for ``retry_after`` seconds (a provider's 429)."""
        if self.limit_for(key) is None or not retry_after or retry_after <= 0:
            return
        pause_ms = int(math.ceil(min(retry_after, 86_400.0) * 1000))
        try:
            await self._penalize(keys=[self._keys(key)[2]], args=[pause_ms])
        except Exception as exc:  # noqa: BLE001
            self._failed("penalize", exc)


async def limited_call(
    limiter: RateLimiter | None,
    instance: Any,
    operation: str,
    data: BaseModel,
    ctx: Any,
    call: Callable[[], Awaitable[T]],
) -> T:
    """Run ``call()`` (one attempt of an operation) under the cluster-wide rate limits.

    Waits for capacity under the service's ``rate_limit_key`` (emitting a progress event
    "waiting for rate-limit capacity" on ``ctx``), pauses the key for every worker when
    the call raises a ``RateLimitError`` with ``retry_after``, and settles the token
    estimate to the usage the call recorded.
    """
    if limiter is None:
        return await call()
    try:
        key = instance.rate_limit_key(operation, data)
    except Exception:  # noqa: BLE001 - a plugin bug must not block its calls
        log.exception("%s.rate_limit_key(%r) raised; calling without a limit",
                      type(instance).__name__, operation)
        key = None
    if key is None or limiter.limit_for(key) is None:
        return await call()

    def on_wait(seconds: float) -> None:
        ctx.progress(None, f"waiting for rate-limit capacity ({key}): about {seconds:.1f}s")

    reservation = await limiter.acquire(key, deadline=ctx.deadline, on_wait=on_wait)
    recorded = len(ctx.usage)
    try:
        return await call()
    except RateLimitError as exc:
        if exc.retry_after and not exc.details.get("local"):
            await limiter.penalize(key, exc.retry_after)
        raise
    finally:
        if reservation is not None:
            used = ctx.usage[recorded:]
            if used:
                await limiter.settle(
                    reservation, sum(u.input_tokens + u.output_tokens for u in used)
                )
