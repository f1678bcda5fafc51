"""Every key a Lua script touches is in its KEYS (issue 19, item 2: a Redis Cluster routes a
script by its KEYS, and a key built inside the script from scratch may sit in another
slot), except the keys a script can only learn from what it reads: those are listed here,
each with why it is in KEYS[1]'s hash slot, and documented where the script is and in
docs/operations.md, "On a Redis Cluster".

A static check over the scripts' Lua: each ``redis.call`` key argument must be
``KEYS[i]``, a local that only ever holds ``KEYS[i]``, or one of :data:`EXCEPTIONS`.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import aiecs_worker

#: Commands whose arguments name no key, and those whose every argument is a key.
NO_KEY = {"TIME", "PUBLISH"}
ALL_KEYS = {"DEL", "EXISTS", "UNLINK"}

_FROM_STATE = "read from the state hash (KEYS[1]); written by a submission as the user's key"
_MEMBER = "a member of a set in KEYS (a state key of the shard: the set's own slot)"
_SHARD = "built from P, KEYS[1]'s shard prefix: KEYS[1]'s slot by construction"

#: (module.NAME of a script, the key argument as written) -> why the caller cannot name it
#: and why it is in KEYS[1]'s hash slot.
EXCEPTIONS: dict[tuple[str, str], str] = {
    # the terminal transition (store/state.py finish_lua, store/hook.py, store/settle.py)
    ("store.events.FINISH_PUBLISH_LUA", "f[5]"):
        "the fair-share window: the state's 'window' field, " + _FROM_STATE,
    ("store.events.FINISH_PUBLISH_LUA", "f[5] .. ':held'"):
        "the fair-share window's FIFO of held executions (is one waiting?): the window's "
        "(the 'window' field, " + _FROM_STATE + ") with a suffix, in its slot",
    ("store.events.FINISH_PUBLISH_LUA", "P .. ':celery:' .. f[7]"):
        "the Celery index entry of the state's Celery id (a cancel or sweep does not know "
        "it); " + _SHARD,
    ("store.events.FINISH_PUBLISH_LUA", "P .. ':owned:' .. f[2]"):
        "the set of the state's owner (the process ending it may be another); " + _SHARD,
    ("store.events.FINISH_PUBLISH_LUA", "other"):
        "retain(): another step's state, named from the step set's members (KEYS)",
    ("store.events.FINISH_PUBLISH_LUA", "k"):
        "retain(k) is called with KEYS (steps, seq, log); the batch's end passes its "
        "group keys: " + _FROM_STATE,
    ("store.events.FINISH_PUBLISH_LUA", "g"): "the group hash: 'group' field, " + _FROM_STATE,
    ("store.events.FINISH_PUBLISH_LUA", "p[1]"):
        "the group's seq, named by the group hash (written by the submission, the user's)",
    ("store.events.FINISH_PUBLISH_LUA", "p[2]"):
        "the group's log, named by the group hash (written by the submission, the user's)",
    ("store.events.FINISH_PUBLISH_LUA", "ck"):
        "the budget counters the reservation charged (its 'day' and 'month' fields: the "
        "periods it was made in), written by the reservation from its KEYS",
    # the sweeps (store/lease.py, store/hold.py)
    ("store.lease.SWEEP_LUA", "set"):
        "a dead owner's set (owners found by the script); " + _SHARD,
    ("store.lease.SWEEP_LUA", "k"): _MEMBER,
    ("store.lease.REAP_LUA", "k"): _MEMBER,
    ("store.lease.REAP_LUA", "name"):
        "a broker list of the entry's queue, only when the broker is this same Redis "
        "(never on a cluster: ARGV[4] is '2' there)",
    ("store.hold.CLAIM_DUE_LUA", "k"): _MEMBER,
    ("store.hold.RELEASE_LUA", "win"):
        "KEYS[4], or on the ended execution's path its 'window' field, " + _FROM_STATE,
    ("store.hold.RELEASE_LUA", "fifo"):
        "KEYS[5], or on the ended execution's path its window's FIFO, " + _FROM_STATE,
    ("store.hold.RELEASE_LUA", "k"): _MEMBER,
    ("store.hold.KEEP_ALIVE_LUA", "k"): _MEMBER,
    ("store.hold.KEEP_ALIVE_LUA", "key"):
        "the waiting execution's steps, seq and log, named from its state key (a member)",
    ("store.hold.KEEP_ALIVE_LUA", "string.match(k, '^[^:]+') .. ':celery:' .. f[1]"):
        "the waiting execution's Celery index entry, built from its state key's shard",
    ("store.hold.KEEP_ALIVE_LUA", "f[2]"): "the waiting execution's group, " + _FROM_STATE,
    ("store.hold.KEEP_ALIVE_LUA", "f[2] .. ':items'"):
        "the waiting execution's group's item list, " + _FROM_STATE,
    # forgetting a user (store/forget.py)
    ("store.forget.FORGET_TASK_LUA", "index"):
        "the Celery index entry of a state's Celery id; " + _SHARD,
    # budgets (store/budgets.py)
    ("store.budgets._RELEASE_LUA", "ck"):
        "the counters a reservation names (its 'day' and 'month' fields)",
    ("store.budgets._RESERVE_LUA", "h[1]"):
        "an entry of 'new': a hold key taken from KEYS[3 + i]",
    ("store.budgets.RESERVE_PENDING_PUBLISH_LUA", "h[1]"):
        "an entry of 'new': a hold key taken from KEYS[K + 3 + i]",
    # Celery's result read from the one record (store/results.py)
    ("store.results.READ_LUA", "state"):
        "the state key the Celery index entry (KEYS[1]) holds: the backend knows only the "
        "Celery id; off a cluster only (on one, Celery stores its own result)",
}

SRC = Path(aiecs_worker.__file__).parent


def scripts() -> dict[str, str]:
    """Every Lua script of aiecs_worker: the str constants that call Redis of the modules
    that define them (``module.NAME``, the module relative to aiecs_worker)."""
    out: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        source = path.read_text()
        if "redis.call" not in source:
            continue
        rel = path.relative_to(SRC).with_suffix("")
        module = importlib.import_module("aiecs_worker." + ".".join(rel.parts))
        found = {f"{'.'.join(rel.parts)}.{name}": value
                 for name, value in vars(module).items()
                 if isinstance(value, str) and "redis.call" in value
                 and re.search(rf"^{name}\s*(:[^=]*)?=", source, re.M)}
        assert found, f"{path}: calls Redis in Lua, but no script constant found"
        out.update(found)
    # a fragment (the terminal transition's hook, settlement, retention) is checked
    # where it runs: inside the scripts that contain it
    return {name: lua for name, lua in out.items()
            if not any(lua in other and lua != other for other in out.values())}


def strip_comments(lua: str) -> str:
    out, i, quote = [], 0, None
    while i < len(lua):
        c = lua[i]
        if quote:
            out.append(c)
            if c == "\\":
                out.append(lua[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
            out.append(c)
        elif lua.startswith("--", i):
            while i < len(lua) and lua[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def split_args(lua: str, start: int) -> list[str]:
    """The top-level arguments of the call whose '(' is at ``start``."""
    args, depth, quote, cur, i = [], 0, None, [], start + 1
    while True:
        c = lua[i]
        if quote:
            if c == "\\":
                cur.append(c + lua[i + 1])
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append("".join(cur).strip())
                return args
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1


def key_args(lua: str) -> list[tuple[str, str]]:
    """(command, key argument) of every redis.call / redis.pcall of a script."""
    out = []
    for m in re.finditer(r"redis\.p?call\(", lua):
        args = split_args(lua, m.end() - 1)
        cmd = args[0].strip("'\"").upper()
        assert re.fullmatch(r"[A-Z]+", cmd), f"command not a literal: {args[0]}"
        if cmd in NO_KEY:
            continue
        keys = args[1:] if cmd in ALL_KEYS else args[1:2]
        out += [(cmd, " ".join(k.split())) for k in keys]
    return out


KEYS_EXPR = re.compile(r"KEYS\[[^\[\]]+\]")


def bound_to_keys(lua: str, name: str) -> bool:
    """Whether the local ``name`` only ever holds KEYS entries: every assignment to it
    (``local a, name = KEYS[1], KEYS[2]``, ``name = ...``, a loop over a table) gives it
    ``KEYS[...]``."""
    values = []
    for m in re.finditer(rf"(?:local\s+)?((?:\w+\s*,\s*)*\b{name}\b(?:\s*,\s*\w+)*)\s*=(?!=)"
                         r"\s*([^\n]+)", lua):
        names = [n.strip() for n in m.group(1).split(",")]
        rhs = [v.strip() for v in m.group(2).split(",")]
        if len(rhs) < len(names):
            return False
        values.append(rhs[names.index(name)])
    for m in re.finditer(rf"for\s+[\w\s,]*\b{name}\s+in\s+ipairs\(\{{([^}}]*)\}}\)", lua):
        values += [v.strip() for v in m.group(1).split(",")]
    if re.search(rf"for\s+[\w\s,]*\b{name}\s+in\s+ipairs\((?!\{{)", lua):
        return False
    return bool(values) and all(KEYS_EXPR.fullmatch(v) for v in values)


def violations() -> tuple[list[str], set[tuple[str, str]]]:
    bad, used = [], set()
    for name, raw in scripts().items():
        lua = strip_comments(raw)
        for cmd, key in key_args(lua):
            if KEYS_EXPR.fullmatch(key):
                continue
            if re.fullmatch(r"\w+", key) and bound_to_keys(lua, key):
                continue
            if (name, key) in EXCEPTIONS:
                used.add((name, key))
                continue
            bad.append(f"{name}: {cmd} {key}")
    return bad, used


def test_every_key_a_script_touches_is_in_its_keys_or_a_listed_exception():
    bad, used = violations()
    assert not bad, ("keys built inside a script, not passed in KEYS (pass them, or list "
                     "them in EXCEPTIONS with why they are in KEYS[1]'s slot):\n"
                     + "\n".join(sorted(set(bad))))
    assert not set(EXCEPTIONS) - used, f"exceptions no script has: {set(EXCEPTIONS) - used}"


def test_the_check_catches_a_key_built_from_scratch():
    """What the check exists for: the per-shard sets named inside a script, as before."""
    lua = strip_comments("""
local P = string.match(KEYS[1], '^[^:]+')
local win, fifo = KEYS[2], KEYS[3]
for _, k in ipairs({KEYS[1], KEYS[4]}) do redis.call('EXPIRE', k, 5) end
redis.call('ZREM', P .. ':pending', KEYS[1])  -- built from scratch
redis.call('SADD', win, fifo)
redis.call('DEL', KEYS[1], P .. ':suspect')
""")
    found = [(cmd, key) for cmd, key in key_args(lua)
             if not KEYS_EXPR.fullmatch(key)
             and not (re.fullmatch(r"\w+", key) and bound_to_keys(lua, key))]
    assert found == [("ZREM", "P .. ':pending'"), ("DEL", "P .. ':suspect'")]


def test_the_exceptions_are_documented_for_operators():
    """Each kind of key a script learns from what it reads is named in the docs."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = text.split("On a Redis Cluster", 1)[1]
    for words in ("fair-share window", "Celery index", "owner's set", "group",
                  "budget counters", "step set", "FIFO"):
        assert words in section, words
