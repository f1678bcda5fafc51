"""Budgets per user: money and tokens, per UTC day and month, enforced at admission with a
reservation that the execution's terminal transition replaces by what it really used.

**Definitions.** Budgets are on when ``AIECS_BUDGETS`` is set (:func:`enabled`; unset,
nothing here runs and a submission costs nothing more). A user's budgets are
:class:`aiecs_core.Budget` rows (period, kind, soft, hard): the operator's for that user
(:func:`set_budgets`, the hash ``aiecs:budget:{user}:limits``) or else everyone's default
(``AIECS_BUDGETS``). A user without budgets costs one hash read per submission and
nothing else: no reservation, no counter.

**Reservation** (:func:`reserve`, one Lua script, atomic per user, for one execution or all
the items of a batch at once): each execution reserves its estimate, :func:`estimate`:

- tokens: its input estimated at four characters a token (the JSON of ``input_data``)
  plus its ``max_output_tokens``, or, when it leaves that unset, the provider's ceiling
  from ``AIECS_MAX_OUTPUT_TOKENS`` (:data:`DEFAULT_MAX_OUTPUT` without one); an operation
  whose input has no ``max_output_tokens`` field (embeddings) reserves its input only,
  and one without a ``model`` reserves nothing;
- money: those tokens at the model's list price (``AIECS_PRICES``). A model without a
  price is **refused** when the user has a money budget (its spend could not be
  counted); with a tokens budget only, it reserves tokens.

The script refuses the submission (:class:`~aiecs_core.BudgetExceededError`, HTTP 402,
nothing reserved or queued) when, for any hard limit, the period's spend plus what is
reserved plus this reservation would pass it, or when the limit is already reached.
Otherwise it adds the reservation to the counters of the current day and month
(``aiecs:budget:{user}:day:YYYY-MM-DD``, ``...:month:YYYY-MM``: ``usd_held`` / ``tok_held``,
nano-dollars and tokens as integers) and records it on the execution
(``<state key>:budget``). An execution already holding a reservation is not charged
twice (``control.submit`` then its ``apply_async``, a redelivered release).

**Settlement** (:data:`aiecs_worker.store.settle.SETTLE_LUA`, run by the terminal transition,
:func:`aiecs_worker.store.state.finish_lua`, exactly once per execution): the
reservation leaves ``*_held`` and the real use enters ``*_spent`` of the same period
counters it was reserved in. Tokens: the usage records' input + output. Money: their
``cost``; **usage that never arrived keeps its reservation**: a record without a cost or
estimated (a cut stream, an unreported usage), or an execution delivered more than once
(an attempt lost with its worker), is charged at least what was reserved. An execution
that never started (cancelled while queued) releases it all.

**Soft limits**: the submission whose reservation takes a period's spend + reservations to
the soft limit or past it gets one warning event per period and kind (a ``progress`` event
on its task's log, ``message`` starting ``budget warning:``), :func:`warn`.

So the hard limit holds under any concurrency: every admission checks and reserves in one
script, and a settlement only ever lowers the total by the unused part of a reservation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiecs_core import (
    Budget,
    BudgetExceededError,
    OperationSpec,
    TaskEvent,
    TaskStatus,
)
from aiecs_core.llm.pricing import price_for
from aiecs_core.llm.tokens import estimate_tokens

from ..ops import metrics
from ..ops.modelpolicy import current_policy
from ..settings import get_settings
from .events import PENDING_ARGS, PENDING_KEYS, pending_publish_lua, publish_sync, run_script
from .keys import BUDGET_HOLD_SUFFIX, budget_counter_key, budget_limits_key
from .scripts import TERMINAL_LUA
from .settle import NANO, RECREATED_TTL

__all__ = ["DEFAULT_MAX_OUTPUT", "RESERVE_PENDING_PUBLISH_LUA", "BudgetsOffError", "Estimate",
           "Hold", "Reserved", "budgets_of",
           "enabled", "estimate", "release", "reserve", "set_budgets", "status", "warn"]

#: Output tokens reserved for a call that sets no ``max_output_tokens`` when
#: AIECS_MAX_OUTPUT_TOKENS gives its provider no ceiling.
DEFAULT_MAX_OUTPUT = 131_072
#: Seconds a reservation record is kept (longer than any execution can wait or run).
HOLD_TTL = 40 * 86400
#: Seconds a period counter is kept after its period's first reservation, by period
#: (the day's: its day and two more; the month's: at least four days past its month).
COUNTER_TTL = {"day": 3 * 86400, "month": 35 * 86400}
_TERMINAL = TERMINAL_LUA
#: A period as an adjective, in messages.
_EVERY = {"day": "daily", "month": "monthly"}
#: (period, kind) of the four budget slots, in the scripts' order.
SLOTS = (("day", "usd"), ("day", "tokens"), ("month", "usd"), ("month", "tokens"))


class BudgetsOffError(ValueError):
    """Budgets are off in this deployment (AIECS_BUDGETS unset): nothing to set."""


def enabled() -> bool:
    """Whether budgets are on (AIECS_BUDGETS is set, if only to ``[]``)."""
    return get_settings().aiecs_budgets is not None


@dataclass(frozen=True)
class Estimate:
    """What one execution reserves: ``usd`` in nano-dollars (``-1``: its model has no
    price) and ``tokens``."""

    usd: int = 0
    tokens: int = 0
    model: str | None = None
    provider: str | None = None


def estimate(spec: OperationSpec, input_data: Any) -> Estimate:
    """The reservation of one call of ``spec`` with ``input_data`` (see the module doc)."""
    if not isinstance(input_data, dict):
        return Estimate()
    model = input_data.get("model")
    if not isinstance(model, str) or not model or spec.service is None:
        return Estimate()
    provider = spec.service.provider or getattr(spec.service, "name", "") or ""
    tokens_in = estimate_tokens(json.dumps(input_data, separators=(",", ":"), default=str))
    tokens_out = 0
    if "max_output_tokens" in getattr(spec.input_model, "model_fields", {}):
        asked = input_data.get("max_output_tokens")
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
            tokens_out = asked
        else:
            tokens_out = current_policy().ceiling(provider) or DEFAULT_MAX_OUTPUT
    price = price_for(provider, model)
    usd = -1 if price is None else math.ceil(
        (tokens_in * price[0] + tokens_out * price[1]) * NANO / 1_000_000)
    return Estimate(usd, tokens_in + tokens_out, model, provider)


# -- definitions -------------------------------------------------------------------------------
def _units(kind: str, value: float | None) -> str:
    """A limit as the scripts hold it: nano-dollars or tokens, '' for none."""
    if value is None:
        return ""
    return str(round(value * NANO) if kind == "usd" else math.floor(value))


def _slots(budgets: Sequence[Budget]) -> list[str]:
    """Eight script arguments: soft and hard of each slot of :data:`SLOTS`."""
    out = ["", ""] * len(SLOTS)
    for b in budgets:
        i = SLOTS.index((b.period, b.kind))
        out[2 * i], out[2 * i + 1] = _units(b.kind, b.soft), _units(b.kind, b.hard)
    return out


def _from_slots(values: Sequence[Any]) -> list[Budget]:
    out = []
    for i, (period, kind) in enumerate(SLOTS):
        soft, hard = (_decode(v) for v in values[2 * i:2 * i + 2])
        if soft is None and hard is None:
            continue
        scale = NANO if kind == "usd" else 1
        out.append(Budget(period=period, kind=kind,
                          soft=None if soft is None else soft / scale,
                          hard=None if hard is None else hard / scale))
    return out


def _decode(value: Any) -> int | None:
    if value is None or value in (b"", ""):
        return None
    return int(value)


def _fields() -> list[str]:
    return [f"{p}:{k}:{lim}" for p, k in SLOTS for lim in ("soft", "hard")]


def budgets_of(client: Any, user_id: str) -> tuple[list[Budget], str]:
    """The user's budgets and where they come from (``"user"``: set by an operator, or
    ``"default"``: AIECS_BUDGETS)."""
    if not enabled():
        return [], "off"
    raw = client.hmget(budget_limits_key(user_id), "set", *_fields())
    if raw[0] is None:
        return list(get_settings().aiecs_budgets or []), "default"
    return _from_slots(raw[1:]), "user"


def set_budgets(client: Any, user_id: str, budgets: Sequence[Budget] | None) -> None:
    """Set a user's budgets (an empty list: none at all), or with None go back to the
    default (AIECS_BUDGETS). Takes effect at the user's next submission; what is spent
    and reserved in the current periods stays counted."""
    if not enabled():
        raise BudgetsOffError("budgets are off in this deployment: set AIECS_BUDGETS "
                              "(a JSON list, [] for no default budget) to turn them on")
    key = budget_limits_key(user_id)
    if budgets is None:
        client.delete(key)
        return
    seen = [(b.period, b.kind) for b in budgets]
    if len(set(seen)) != len(seen):
        raise ValueError("one budget per period and kind")
    values = _slots(budgets)
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping={"set": 1, **dict(zip(_fields(), values, strict=True))})
        pipe.execute()


# -- periods -----------------------------------------------------------------------------------
def _periods(now: datetime) -> dict[str, tuple[str, datetime]]:
    """Per period: its id in counter keys and when the next one starts."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    return {"day": (f"day:{day:%Y-%m-%d}", day + timedelta(days=1)),
            "month": (f"month:{month:%Y-%m}", next_month)}


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


# -- reservation -------------------------------------------------------------------------------
def _reserve_lua(k: int, a: int, *, one_new: bool = False) -> str:
    """Lua defining ``reserve()``, the reservation (its keys from ``KEYS[k + 1]``, its
    arguments from ``ARGV[a + 1]`` to the end):

    KEYS: limits, day counter, month counter, then one hold key per execution (an
    execution that holds one already, or has ended, is skipped: a repeated submission of
    it runs nothing new), then the state key of each execution, in the same order.
    ARGV: the 8 default limits (soft, hard per slot; '' none), day
    ttl, month ttl, hold ttl, then per execution: nano-dollars (-1: unpriced), tokens.
    Returns {0} the user has no budgets (nothing done); {1, new, slot, committed, ...}
    reserved (``new``: how many executions had no reservation yet), with the slots whose
    soft limit it reached for the first time this period; {2, slot, committed, requested,
    limit} refused by a hard limit; {3, index} unpriced under a money budget.

    ``one_new``: the caller knows the executions have no state yet (the PENDING record's
    script, :data:`RESERVE_PENDING_PUBLISH_LUA`): their status is not read. A period
    counter gets its TTL when this creates it (a settlement that finds it expired gives it
    one again)."""
    ended = "" if one_new else (
        "local st = redis.call('HGET', KEYS[K + 3 + n + i], 'status')\n"
        "    if st and terminal[st] then break end\n    ")
    return f"""
local function reserve()
local K, A = {k}, {a}
local terminal = {_TERMINAL}
local fields = {{'set'}}
for _, p in ipairs({{'day', 'month'}}) do
  for _, kind in ipairs({{'usd', 'tokens'}}) do
    fields[#fields + 1] = p .. ':' .. kind .. ':soft'
    fields[#fields + 1] = p .. ':' .. kind .. ':hard'
  end
end
local d = redis.call('HMGET', KEYS[K + 1], unpack(fields))
local L = {{}}
local any = false
for i = 1, 8 do
  if d[1] then L[i] = d[i + 1] or '' else L[i] = ARGV[A + i] end
  if L[i] ~= '' then any = true end
end
if not any then return {{0}} end
local money = L[1] ~= '' or L[2] ~= '' or L[5] ~= '' or L[6] ~= ''
local n = (#ARGV - A - 11) / 2
local usd, tok = 0, 0
local new = {{}}
for i = 1, n do
  repeat
    {ended}if redis.call('EXISTS', KEYS[K + 3 + i]) == 1 then break end
    local u, t = tonumber(ARGV[A + 10 + 2 * i]), tonumber(ARGV[A + 11 + 2 * i])
    if u < 0 then
      if money then return {{3, i}} end
      u = 0
    end
    new[#new + 1] = {{KEYS[K + 3 + i], u, t}}
    usd = usd + u
    tok = tok + t
  until true  -- break: skipped
end
if #new == 0 then return {{1, 0}} end
local c = {{redis.call('HMGET', KEYS[K + 2], 'usd_spent', 'usd_held', 'tok_spent', 'tok_held'),
           redis.call('HMGET', KEYS[K + 3], 'usd_spent', 'usd_held', 'tok_spent', 'tok_held')}}
local committed, need = {{}}, {{}}
for b = 1, 4 do
  local cnt = c[math.floor((b + 1) / 2)]
  local off = 0
  need[b] = usd
  if b % 2 == 0 then off = 2; need[b] = tok end
  committed[b] = tonumber(cnt[1 + off] or '0') + tonumber(cnt[2 + off] or '0')
  local hard = L[2 * b]
  if hard ~= '' and (committed[b] + need[b] > tonumber(hard)
                     or committed[b] >= tonumber(hard)) then
    return {{2, b, string.format('%d', committed[b]), string.format('%d', need[b]), hard}}
  end
end
for p = 1, 2 do
  local ck = KEYS[K + 1 + p]
  if usd > 0 then redis.call('HINCRBY', ck, 'usd_held', string.format('%d', usd)) end
  if tok > 0 then redis.call('HINCRBY', ck, 'tok_held', string.format('%d', tok)) end
  local cp = c[p]
  if not (cp[1] or cp[2] or cp[3] or cp[4]) then  -- this period's first reservation
    redis.call('HSETNX', ck, 'usd_spent', 0)
    redis.call('EXPIRE', ck, ARGV[A + 8 + p])
  end
end
for _, h in ipairs(new) do
  redis.call('HSET', h[1], 'usd', string.format('%d', h[2]), 'tok', string.format('%d', h[3]),
             'day', KEYS[K + 2], 'month', KEYS[K + 3])
  redis.call('EXPIRE', h[1], ARGV[A + 11])
end
local out = {{1, #new}}
for b = 1, 4 do
  local soft = L[2 * b - 1]
  if soft ~= '' and committed[b] + need[b] >= tonumber(soft) then
    local kind = 'usd'
    if b % 2 == 0 then kind = 'tok' end
    if redis.call('HSETNX', KEYS[K + 1 + math.floor((b + 1) / 2)], 'warned_' .. kind, 1) == 1
    then
      out[#out + 1] = b
      out[#out + 1] = string.format('%d', committed[b] + need[b])
    end
  end
end
return out
end
"""


_RESERVE_LUA = _reserve_lua(0, 0) + "return reserve()\n"

#: The PENDING record of one execution (:data:`aiecs_worker.store.events.
#: PENDING_PUBLISH_LUA`'s keys and arguments) with its reservation made first in the same
#: script (then :func:`_reserve_lua`'s, for that execution): one round trip. Returns 0
#: when the execution already has a state (nothing done, nothing reserved), ``{-1,
#: ...}`` (the reservation's refusal: nothing recorded), or ``{seq, ...}`` (the
#: reservation's outcome).
RESERVE_PENDING_PUBLISH_LUA = pending_publish_lua(
    before=_reserve_lua(PENDING_KEYS, PENDING_ARGS, one_new=True)
    + "local rv = reserve()\nif rv[1] >= 2 then return {-1, unpack(rv)} end\n",
    result="{seq, unpack(rv)}")

# Keys not in KEYS: the counters each hold names (its ``day`` and ``month`` fields,
# written by the reservation from its KEYS: the user's, in the hold's hash slot).
# KEYS: hold keys.  Undoes reservations that :func:`reserve` made for a submission refused
# afterwards (a quota, an id that exists): each hold leaves its counters.  Returns how many.
_RELEASE_LUA = f"""
local n = 0
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'usd', 'tok', 'day', 'month')
  if h[3] then
    for _, ck in ipairs({{h[3], h[4]}}) do
      redis.call('HINCRBY', ck, 'usd_held', string.format('%d', -tonumber(h[1])))
      redis.call('HINCRBY', ck, 'tok_held', string.format('%d', -tonumber(h[2])))
      if redis.call('TTL', ck) < 0 then redis.call('EXPIRE', ck, {RECREATED_TTL}) end
    end
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
"""

def hold_key(state_key: str) -> str:
    """The key of an execution's reservation."""
    return state_key + BUDGET_HOLD_SUFFIX


@dataclass
class Reserved:
    """What :func:`reserve` did: the executions it reserved for (``state_keys``: all of
    them, or none when some held a reservation already) and the soft limits it reached
    first this period, as ``(period, kind, committed, soft)`` (for :func:`warn`)."""

    state_keys: list[str]
    crossed: list[tuple[str, str, float, float]]


def reserve(client: Any, user_id: str, items: Sequence[tuple[str, Estimate]],
            *, now: datetime | None = None) -> Reserved:
    """Reserve the estimates of executions ``items`` (``(state key, estimate)``) against
    the user's budgets, all or none; raise :class:`~aiecs_core.BudgetExceededError` (and
    count it in ``aiecs_budget_refusals_total``) when a hard limit refuses them. An
    execution that holds a reservation already is not charged again."""
    if get_settings().aiecs_budgets is None or not items:
        return Reserved([], [])
    now = now or datetime.now(UTC)
    keys, args = _script_input(user_id, items, now)
    return _outcome(client, user_id, items, now, run_script(client, _RESERVE_LUA, keys, args))


def _script_input(user_id: str, items: Sequence[tuple[str, Estimate]], now: datetime
                  ) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of :func:`_reserve_lua` for ``items``."""
    periods = _periods(now)
    keys = [budget_limits_key(user_id),
            budget_counter_key(user_id, periods["day"][0]),
            budget_counter_key(user_id, periods["month"][0]),
            *(hold_key(k) for k, _ in items), *(k for k, _ in items)]
    args: list[Any] = [*_slots(get_settings().aiecs_budgets or []), COUNTER_TTL["day"],
                       COUNTER_TTL["month"], HOLD_TTL]
    for _, e in items:
        args += [e.usd, e.tokens]
    return keys, args


def _outcome(client: Any, user_id: str, items: Sequence[tuple[str, Estimate]],
             now: datetime, out: Sequence[Any]) -> Reserved:
    """What the reservation script's reply ``out`` says: Reserved, or the refusal raised."""
    periods = _periods(now)
    code = int(out[0])
    if code == 0:
        return Reserved([], [])
    if code == 3:
        e = items[int(out[1]) - 1][1]
        metrics.budget_refused("unpriced", "usd")
        raise BudgetExceededError(
            f"model {e.provider}/{e.model} has no price in AIECS_PRICES and a money budget "
            f"applies to user {user_id!r}: its cost could not be counted, so it is refused "
            "(ask the operator to add its price, or use a priced model)",
            reason="unpriced", kind="usd", model=f"{e.provider}/{e.model}")
    if code == 2:
        period, kind = SLOTS[int(out[1]) - 1]
        committed, requested, limit = (int(x) for x in out[2:5])
        metrics.budget_refused(period, kind)
        shown = _shown(kind)
        raise BudgetExceededError(
            f"budget exceeded: user {user_id!r} has a {_EVERY[period]} {kind} hard limit of "
            f"{shown(limit)}; {shown(committed)} is spent or reserved this {period} and this "
            f"submission would reserve {shown(requested)} (its estimated input plus "
            f"max_output_tokens); the {period} resets at {_iso(periods[period][1])}",
            period=period, kind=kind, limit=_value(kind, limit),
            committed=_value(kind, committed), requested=_value(kind, requested),
            resets_at=_iso(periods[period][1]))
    crossed = []
    rows = list(out[2:])
    limits: dict[tuple[str, str], Budget] = (
        {(b.period, b.kind): b for b in budgets_of(client, user_id)[0]} if rows else {})
    for i in range(0, len(rows), 2):
        period, kind = SLOTS[int(rows[i]) - 1]
        soft = limits.get((period, kind))
        crossed.append((period, kind, _value(kind, int(rows[i + 1])),
                        soft.soft if soft is not None and soft.soft is not None else 0.0))
    new = int(out[1])
    return Reserved([k for k, _ in items] if new == len(items) else [], crossed)


@dataclass
class Hold:
    """The reservation of one execution that its PENDING record's script makes
    (:data:`RESERVE_PENDING_PUBLISH_LUA`, run by
    :func:`aiecs_worker.store.records.record_pending`: one round trip for both), or, with
    ``reserved`` already set, one made a moment ago (``control.submit``): nothing more to
    reserve. ``reserved`` holds the outcome once the record is made (for :func:`warn`)."""

    user_id: str
    state_key: str
    estimate: Estimate | None = None
    reserved: Reserved | None = None
    now: datetime | None = None

    def script(self) -> tuple[list[str], list[Any]] | None:
        """The reservation's KEYS and ARGV for the PENDING script, or None when there is
        nothing to reserve here."""
        if self.reserved is not None or self.estimate is None:
            return None
        self.now = datetime.now(UTC)
        return _script_input(self.user_id, [(self.state_key, self.estimate)], self.now)

    def settle(self, client: Any, out: Sequence[Any]) -> None:
        """Take the reservation's reply (the script's, after the seq or the refusal's
        -1): ``reserved`` set, or BudgetExceededError raised (nothing was recorded)."""
        assert self.estimate is not None and self.now is not None
        self.reserved = _outcome(client, self.user_id, [(self.state_key, self.estimate)],
                                 self.now, out)


def release(client: Any, reserved: Reserved) -> int:
    """Undo what :func:`reserve` reserved for a submission refused afterwards (nothing
    was queued): the amounts leave the counters. How many reservations there were."""
    if not reserved.state_keys:
        return 0
    keys = [hold_key(k) for k in reserved.state_keys]
    return int(run_script(client, _RELEASE_LUA, keys, []))


def _value(kind: str, units: int) -> float | int:
    return units / NANO if kind == "usd" else units


def _shown(kind: str):
    if kind == "usd":
        return lambda units: f"${units / NANO:.6g}"
    return lambda units: f"{units} tokens"


def warn(client: Any, user_id: str, task_id: str, step: int, task_name: str,
         crossed: Sequence[tuple[str, str, float, float]]) -> None:
    """Publish the soft-limit warnings :func:`reserve` returned on the task's log (a
    ``progress`` event, to the user's room). Best effort: never fails a submission."""
    if not crossed:
        return
    s = get_settings()
    parts = []
    for period, kind, committed, soft in crossed:
        if kind == "usd":
            parts.append(f"{_EVERY[period]} spend ${committed:.6g} (spent + reserved) reached "
                         f"the soft limit ${soft:.6g}")
        else:
            parts.append(f"{_EVERY[period]} tokens {committed} (spent + reserved) reached the "
                         f"soft limit {soft:g}")
    event = TaskEvent(type="progress", task_id=task_id, step=step, user_id=user_id,
                      task_name=task_name, status=TaskStatus.PENDING,
                      message="budget warning: " + "; ".join(parts))
    try:
        publish_sync(client, event, s.aiecs_socketio_channel, s.aiecs_events_maxlen,
                     s.aiecs_events_ttl)
    except Exception:  # noqa: BLE001 - a warning never fails the submission
        return


# -- reading -----------------------------------------------------------------------------------
def status(client: Any, user_id: str, *, now: datetime | None = None) -> dict[str, Any]:
    """The user's budgets with their current periods' spend: ``{"user_id", "source",
    "budgets": [{"period", "kind", "soft", "hard", "spent", "reserved", "remaining",
    "resets_at"}]}`` (usd in dollars, tokens as integers); ``source`` is ``user`` (set by
    an operator), ``default`` (AIECS_BUDGETS) or ``off`` (budgets are off)."""
    now = now or datetime.now(UTC)
    periods = _periods(now)
    budgets, source = budgets_of(client, user_id)
    pipe = client.pipeline(transaction=False)
    for b in budgets:
        pipe.hmget(budget_counter_key(user_id, periods[b.period][0]),
                   "usd_spent", "usd_held", "tok_spent", "tok_held")
    rows = []
    for b, counts in zip(budgets, pipe.execute() if budgets else [], strict=True):
        off = 0 if b.kind == "usd" else 2
        spent, held = (_decode(x) or 0 for x in counts[off:off + 2])
        spent_v, held_v = _value(b.kind, spent), _value(b.kind, max(0, held))
        remaining = None
        if b.hard is not None:
            remaining = max(0, b.hard - spent_v - held_v)
            if b.kind == "tokens":
                remaining = int(remaining)
        rows.append({"period": b.period, "kind": b.kind, "soft": b.soft, "hard": b.hard,
                     "spent": spent_v, "reserved": held_v, "remaining": remaining,
                     "resets_at": _iso(periods[b.period][1])})
    return {"user_id": user_id, "source": source, "budgets": rows}
