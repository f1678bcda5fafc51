"""aiecs_worker.runner.ratelimit against a real Redis: RPM/TPM windows, 429 pauses, settling,
deadlines, wildcards, Redis outages, and several processes sharing one limit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time

import pytest
import redis.asyncio as aioredis
from aiecs_core import ConfigurationError, RateLimitError, RateLimitKey, Usage
from aiecs_worker.runner.ratelimit import (
    RATE_LIMITS_ENV,
    Limit,
    RateLimiter,
    limited_call,
    parse_limits,
)

KEY = RateLimitKey(provider="openai", model="gpt-test", tokens=10)


def run(redis_url: str, limits: dict, scenario):
    async def main():
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await scenario(RateLimiter(client, parse_limits(json.dumps(limits))))
        finally:
            await client.aclose()

    return asyncio.run(main())


# --- configuration ---------------------------------------------------------------------------


def test_parse_limits():
    limits = parse_limits('{"openai/gpt-4o": {"rpm": 60, "tpm": 1000}, "xai/*": {}}')
    assert limits == {"openai/gpt-4o": Limit(rpm=60, tpm=1000), "xai/*": Limit()}
    assert parse_limits(None) == {} and parse_limits("  ") == {}


@pytest.mark.parametrize(
    "raw",
    ['[1]', '{"openai": {"rpm": 1}}', '{"openai/m": {"rpm": 0}}', '{"a/b": {"rpx": 1}}', "{"],
)
def test_invalid_limits_name_the_variable(raw):
    with pytest.raises(ConfigurationError) as info:
        parse_limits(raw)
    assert info.value.env_var == RATE_LIMITS_ENV and RATE_LIMITS_ENV in info.value.message


def test_from_env(monkeypatch):
    monkeypatch.delenv(RATE_LIMITS_ENV, raising=False)
    client = aioredis.Redis()  # never connected
    assert RateLimiter.from_env(client) is None
    monkeypatch.setenv(RATE_LIMITS_ENV, '{"vertex/*": {"rpm": 5}}')
    limiter = RateLimiter.from_env(client)
    assert limiter.limit_for(RateLimitKey(provider="vertex", model="any")) == Limit(rpm=5)
    assert limiter.limit_for(RateLimitKey(provider="openai", model="any")) is None


# --- requests per window --------------------------------------------------------------------


def test_rpm_admits_up_to_the_limit_then_waits_for_the_window(redis_server):
    async def scenario(limiter):
        waits: list[float] = []
        for _ in range(3):
            assert await limiter.acquire(KEY, on_wait=waits.append) is not None
        assert waits == []
        started = time.monotonic()
        assert await limiter.acquire(KEY, on_wait=waits.append) is not None
        return waits, time.monotonic() - started

    waits, waited = run(redis_server.url, {"openai/gpt-test": {"rpm": 3, "window": 1}},
                        scenario)
    assert len(waits) == 1 and 0 < waits[0] <= 1.0
    assert waited > 0.5  # it really waited for the oldest call to leave the window


def test_no_capacity_before_the_deadline_fails_without_retry(redis_server):
    async def scenario(limiter):
        await limiter.acquire(KEY)
        with pytest.raises(RateLimitError) as info:
            await limiter.acquire(KEY, deadline=time.monotonic() + 1)
        return info.value

    error = run(redis_server.url, {"openai/gpt-test": {"rpm": 1, "window": 30}}, scenario)
    assert not error.is_retryable and error.retry_after > 25
    assert "gpt-test" in error.message and RATE_LIMITS_ENV in error.message


def test_exact_keys_count_separately_and_the_wildcard_is_one_shared_budget(redis_server):
    async def scenario(limiter):
        a = RateLimitKey(provider="vertex", model="a")
        b = RateLimitKey(provider="vertex", model="b")
        pinned = RateLimitKey(provider="vertex", model="pinned")
        assert await limiter.acquire(a) and await limiter.acquire(pinned)
        # b has no entry of its own: it shares a's budget (vertex/*)
        with pytest.raises(RateLimitError):
            await limiter.acquire(b, deadline=time.monotonic() + 0.5)
        with pytest.raises(RateLimitError):
            await limiter.acquire(pinned, deadline=time.monotonic() + 0.5)
        other = RateLimitKey(provider="openai", model="a")
        return await limiter.acquire(other)

    assert run(redis_server.url, {"vertex/*": {"rpm": 1, "window": 30},
                                  "vertex/pinned": {"rpm": 1, "window": 30}}, scenario) is None


SPELLINGS = ["gpt-4o-mini", "gpt-4o-mini ", "\tgpt-4o-mini", "GPT-4o-Mini",
             "gpt-4o-mini-2024-07-18", "gpt-4o-mini\n"]


@pytest.mark.parametrize("limits", [
    {"openai/*": {"rpm": 2, "window": 60}},
    {"openai/*": {"rpm": 2, "window": 60}, "OpenAI/GPT-4o-mini ": {"rpm": 2, "window": 60}},
], ids=["wildcard", "exact-and-wildcard"])
def test_spellings_of_one_model_share_one_budget(redis_server, limits):
    """Issue 16 row 8: six spellings of one model let 5 of 6 calls through 2 rpm."""
    async def scenario(limiter):
        admitted = []
        for model in SPELLINGS:
            key = RateLimitKey(provider="openai", model=model, tokens=1)
            try:
                await limiter.acquire(key, deadline=time.monotonic() + 0.3)
            except RateLimitError:
                continue
            admitted.append(model)
        return admitted

    admitted = run(redis_server.url, limits, scenario)
    if len(limits) == 1:
        assert admitted == SPELLINGS[:2]
    else:  # the listed model's spellings share its entry; the dated one falls under *
        assert admitted == ["gpt-4o-mini", "gpt-4o-mini ", "gpt-4o-mini-2024-07-18"]


def test_every_rate_limit_key_expires(redis_server):
    """Settle used to delete and re-add the log without a TTL: keys that never expire."""
    import redis as sync_redis

    async def scenario(limiter):
        key = RateLimitKey(provider="openai", model="ttl-model", tokens=50)
        first = await limiter.acquire(key)
        await limiter.settle(first, 10)  # the only member: ZREM drops the log, ZADD re-adds
        second = await limiter.acquire(key)  # waits out the window, sweeping the first
        await limiter.settle(second, 70)
        await limiter.penalize(key, 0.5)

    run(redis_server.url, {"openai/*": {"rpm": 1, "tpm": 1000, "window": 1}}, scenario)
    client = sync_redis.Redis.from_url(redis_server.url)
    keys = list(client.scan_iter("aiecs:rl:*"))
    ttls = {k: client.pttl(k) for k in keys}
    client.close()
    assert len(keys) == 3, keys
    assert all(ttl > 0 for ttl in ttls.values()), ttls


# --- tokens per window ------------------------------------------------------------------------


def test_tpm_counts_tokens_and_settles_to_actual_usage(redis_server):
    async def scenario(limiter):
        first = await limiter.acquire(KEY.model_copy(update={"tokens": 60}))
        big = KEY.model_copy(update={"tokens": 60})
        with pytest.raises(RateLimitError):
            await limiter.acquire(big, deadline=time.monotonic() + 0.5)
        await limiter.settle(first, 20)  # the call used less than estimated
        return await limiter.acquire(big, deadline=time.monotonic() + 0.5)

    assert run(redis_server.url, {"openai/gpt-test": {"tpm": 100, "window": 30}}, scenario)


def test_a_call_larger_than_tpm_waits_for_an_empty_window(redis_server):
    async def scenario(limiter):
        huge = KEY.model_copy(update={"tokens": 500})
        assert await limiter.acquire(huge)  # alone in the window: admitted
        with pytest.raises(RateLimitError):
            await limiter.acquire(KEY, deadline=time.monotonic() + 0.5)

    run(redis_server.url, {"openai/gpt-test": {"tpm": 100, "window": 30}}, scenario)


# --- 429 pauses -------------------------------------------------------------------------------


def test_penalize_pauses_the_key_for_everyone_until_retry_after(redis_server):
    async def scenario(limiter):
        await limiter.penalize(KEY, 30)
        with pytest.raises(RateLimitError) as info:
            await limiter.acquire(KEY, deadline=time.monotonic() + 1)
        other = await limiter.acquire(RateLimitKey(provider="openai", model="other"))
        # a shorter pause never shortens a longer one
        await limiter.penalize(KEY, 1)
        with pytest.raises(RateLimitError):
            await limiter.acquire(KEY, deadline=time.monotonic() + 2)
        return info.value, other

    # gpt-test has an entry of its own; "other" falls under openai/* (a separate budget)
    error, other = run(redis_server.url, {"openai/gpt-test": {}, "openai/*": {}}, scenario)
    assert 25 < error.retry_after <= 30
    assert other is not None


def test_penalty_expires(redis_server):
    async def scenario(limiter):
        await limiter.penalize(KEY, 0.3)
        waits: list[float] = []
        reservation = await limiter.acquire(KEY, on_wait=waits.append,
                                            deadline=time.monotonic() + 10)
        return reservation, waits

    reservation, waits = run(redis_server.url, {"openai/gpt-test": {}}, scenario)
    assert reservation is not None and len(waits) == 1 and waits[0] <= 0.3


# --- limited_call ---------------------------------------------------------------------------


class _Ctx:
    deadline = None

    def __init__(self):
        self.usage: list[Usage] = []
        self.messages: list[str] = []

    def progress(self, fraction, message):
        self.messages.append(message)


class _Service:
    def __init__(self, key):
        self.key = key

    def rate_limit_key(self, operation, data):
        if isinstance(self.key, Exception):
            raise self.key
        return self.key


def test_limited_call_reports_waiting_penalizes_and_settles(redis_server):
    async def scenario(limiter):
        ctx = _Ctx()
        service = _Service(KEY.model_copy(update={"tokens": 90}))

        async def ok():
            ctx.usage.append(Usage(provider="openai", model="gpt-test", input_tokens=5,
                                   output_tokens=5))
            return "ok"

        assert await limited_call(limiter, service, "chat", None, ctx, ok) == "ok"
        # settled to 10 tokens: another 90-token call fits in tpm=100 at once
        assert await limited_call(limiter, service, "chat", None, ctx, ok) == "ok"
        assert ctx.messages == []

        async def limited():
            raise RateLimitError("429", provider="openai", retry_after=0.4)

        other = _Service(RateLimitKey(provider="openai", model="gpt-429", tokens=1))
        with pytest.raises(RateLimitError):
            await limited_call(limiter, other, "chat", None, ctx, limited)
        # the 429 paused that key: its next call waits, and says so
        assert await limited_call(limiter, other, "chat", None, ctx, ok) == "ok"
        return ctx.messages

    limits = {"openai/gpt-test": {"tpm": 100, "window": 30}, "openai/gpt-429": {}}
    messages = run(redis_server.url, limits, scenario)
    assert len(messages) == 1 and messages[0].startswith(
        "waiting for rate-limit capacity (openai/gpt-429)")


def test_limited_call_without_limiter_key_or_with_a_broken_plugin(redis_server):
    async def scenario(limiter):
        ctx = _Ctx()

        async def ok():
            return 1

        results = [
            await limited_call(None, _Service(KEY), "chat", None, ctx, ok),
            await limited_call(limiter, _Service(None), "chat", None, ctx, ok),
            await limited_call(limiter, _Service(RuntimeError("bug")), "chat", None, ctx, ok),
        ]
        return results

    assert run(redis_server.url, {"openai/*": {"rpm": 1}}, scenario) == [1, 1, 1]


def test_redis_outage_lets_calls_through(redis_server):
    url = redis_server.url
    redis_server.stop()

    async def scenario(limiter):
        return [await limiter.acquire(KEY) for _ in range(3)]

    assert run(url, {"openai/gpt-test": {"rpm": 1}}, scenario) == [None, None, None]


# --- several processes ------------------------------------------------------------------------

_HAMMER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import redis.asyncio as aioredis
    from aiecs_core import RateLimitKey
    from aiecs_worker.runner.ratelimit import RateLimiter, parse_limits

    async def main():
        client = aioredis.Redis.from_url(sys.argv[1])
        limiter = RateLimiter(client, parse_limits(sys.argv[2]))
        key = RateLimitKey(provider="openai", model="shared", tokens=1)
        times = []
        for _ in range(int(sys.argv[3])):
            await limiter.acquire(key)
            times.append(time.time())
        await client.aclose()
        print(json.dumps(times))

    asyncio.run(main())
    """
)


def test_processes_sharing_a_limit_never_exceed_it(redis_server):
    limits = json.dumps({"openai/shared": {"rpm": 4, "window": 1}})
    procs = [
        subprocess.Popen([sys.executable, "-c", _HAMMER, redis_server.url, limits, "6"],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        times = sorted(t for p in procs for t in json.loads(p.communicate(timeout=60)[0]))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert len(times) == 18
    # Admissions are decided on Redis's clock; these are the clients' clocks, read just
    # after, so allow a little slack at the window's edge.
    for i, start in enumerate(times):
        in_window = [t for t in times[i:] if t < start + 1.0 - 0.05]
        assert len(in_window) <= 4, (start, in_window)
