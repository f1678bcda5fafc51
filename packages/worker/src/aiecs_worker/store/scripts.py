"""Lua scripts in a pipeline, one round trip: ``EVALSHA``, loading on ``NOSCRIPT``.

redis-py's ``Script`` objects, called on a pipeline, make the pipeline send ``SCRIPT
EXISTS`` for every script first, on every ``execute()``: one more round trip per
submission. Here a pipeline sends ``EVALSHA`` with the script's SHA1 computed locally;
when Redis answers ``NOSCRIPT`` (a new, restarted or flushed Redis), the scripts it
refused are loaded and only the refused commands are sent again: a script that Redis
refused did not run, so sending it again runs it once. In a transaction (``MULTI`` …
``EXEC``) the whole transaction is sent again instead, to keep it atomic: its other
commands must be safe to repeat (reads). On a Redis Cluster, ``SCRIPT LOAD`` goes to
every primary (redis-py's ``RedisCluster.script_load``).

Imports nothing from aiecs_worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Sequence
from typing import Any

from aiecs_core import TERMINAL_STATUSES
from redis.exceptions import NoScriptError

__all__ = ["TERMINAL_LUA", "Call", "Coalesced", "load_together", "partners", "pipelined", "sha1"]

#: A Lua table literal: terminal status -> true. Sorted: a script's text (so its SHA1) must
#: be the same in every process (a frozenset's order changes with each interpreter's hash
#: seed, and Redis then kept one copy of every script per order).
TERMINAL_LUA = "{" + ",".join(f"['{v}']=true"
                             for v in sorted(s.value for s in TERMINAL_STATUSES)) + "}"

#: One command of a pipeline: ``(script, numkeys, *keys_and_args)`` runs a Lua script by
#: its SHA1; ``(None, "HMGET", ...)`` any other command.
Call = tuple[Any, ...]

_shas: dict[str, str] = {}
#: The scripts loaded through each client (once, before its first pipeline that uses
#: them): re-sending only what Redis refused must never reorder calls, and it would if a
#: later script of a pipeline was known to Redis and an earlier one was not.
_loaded: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


#: Scripts that must be known to Redis together (see :func:`load_together`).
_together: list[frozenset[str]] = []


def load_together(*scripts: str) -> None:
    """Declare that whoever loads one of ``scripts`` loads all of them: a pipeline that
    sends several of them must never find one known to Redis and another not (re-sending
    the refused one would put it after the other)."""
    _together.append(frozenset(scripts))


def partners(scripts: set[str]) -> set[str]:
    """``scripts`` and every script declared to be loaded with one of them."""
    out = set(scripts)
    for group in _together:
        if group & scripts:
            out |= group
    return out


def sha1(script: str) -> str:
    """The SHA1 Redis knows ``script`` by (computed once per script per process)."""
    sha = _shas.get(script)
    if sha is None:
        sha = _shas[script] = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324
    return sha


def pipelined(client: Any, calls: Sequence[Call], *, transaction: bool = False) -> list[Any]:
    """Run ``calls`` in one pipeline of a synchronous client and return their replies;
    an error reply other than NOSCRIPT is raised (the first one), as ``execute()`` does."""
    known = _loaded.setdefault(client, set())
    missing = {c[0] for c in calls if c[0] is not None} - known
    if missing:  # first use by this client: with the scripts loaded together with them
        for script in partners(missing) - known:
            client.script_load(script)
            known.add(script)
    out = _run(client, calls, transaction)
    refused = [i for i, r in enumerate(out) if isinstance(r, NoScriptError)]
    if refused:
        # Redis lost its scripts (a restart, SCRIPT FLUSH): every script refused here was
        # refused alike; load every script this process knows, so that no later pipeline
        # finds some loaded and others not
        for script in known:  # this call's scripts among them
            client.script_load(script)
        if transaction:
            out = _run(client, calls, transaction)
        else:
            again = _run(client, [calls[i] for i in refused], transaction)
            for i, r in zip(refused, again, strict=True):
                out[i] = r
    for r in out:
        if isinstance(r, Exception):
            raise r
    return out


def _run(client: Any, calls: Sequence[Call], transaction: bool) -> list[Any]:
    with client.pipeline(transaction=transaction) as pipe:
        for script, *args in calls:
            if script is None:
                pipe.execute_command(*args)
            else:
                # a plain command: a Redis Cluster's pipeline refuses .evalsha
                pipe.execute_command("EVALSHA", sha1(script), *args)
        return list(pipe.execute(raise_on_error=False))


class Coalesced:
    """One Lua script, called on an asyncio client: the calls made in the same turn of
    the event loop go out together, in one pipeline of ``EVALSHA`` (one round trip and
    one pooled connection for them all, instead of one each).

    ``await coalesced(keys=..., args=...)`` is the script's reply, as a
    ``register_script`` object's call is; an error reply is raised to its own caller
    only, a failure of the round trip (the connection) to every caller of the batch. The
    calls are independent: each is one atomic script call, run once (a script Redis
    refused with ``NOSCRIPT`` did not run: it is loaded and sent again); their order
    within a batch is their callers' order. The first caller of a turn schedules the
    send behind what the loop has ready (the other executions a batch of messages
    started, which call it in the same turn): nothing waits for a timer.
    """

    def __init__(self, client: Any, script: str):
        self.client = client
        self.script = script
        self.sha = sha1(script)
        self._calls: list[tuple[Sequence[Any], Sequence[Any], asyncio.Future]] = []
        self._sending: set[asyncio.Task] = set()
        self._loaded = False

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self._calls:
            task = loop.create_task(self._send())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._calls.append((keys, args, fut))
        return fut

    async def _send(self) -> None:
        calls, self._calls = self._calls, []
        calls = [c for c in calls if not c[2].done()]  # a caller cancelled meanwhile
        if not calls:
            return
        try:
            if not self._loaded:
                await self.client.script_load(self.script)
                self._loaded = True
            replies = await self._pipeline(calls)
            refused = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if refused:  # Redis lost its scripts (a restart, SCRIPT FLUSH)
                await self.client.script_load(self.script)
                again = await self._pipeline([calls[i] for i in refused])
                for i, r in zip(refused, again, strict=True):
                    replies[i] = r
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch is told
            for _, _, fut in calls:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception)
                                      else ConnectionError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, fut), reply in zip(calls, replies, strict=True):
            if fut.done():
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    async def _pipeline(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any], Any]]
                        ) -> list[Any]:
        if len(calls) == 1:  # one call: no pipeline to build
            keys, args, _ = calls[0]
            try:
                return [await self.client.execute_command("EVALSHA", self.sha, len(keys),
                                                          *keys, *args)]
            except NoScriptError as exc:
                return [exc]
        async with self.client.pipeline(transaction=False) as pipe:
            for keys, args, _ in calls:
                # a plain command: a Redis Cluster's pipeline refuses .evalsha
                pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
