"""The token revocation list, in Redis: by ``jti``, or every token of a user issued before
a time.

``aiecs:revoked:jti:<jti>``   a revoked token id
``aiecs:revoked:user:<user>`` unix time T: the user's tokens issued (``iat``) before T
``aiecs:revoked:gen``         changes at every revocation (servers poll it)

Every key expires once no token it refuses can still be valid: a token lives at most
AIECS_TOKEN_MAX_LIFETIME after its ``iat``, so a revoked ``jti`` needs remembering for that
long and a user's cut-off for that long after T. The progress server checks the list on
every authenticated HTTP request (nothing is cached: a revocation is honoured by every
server process from the next request on) and on every Socket.IO connect, and polls
``gen`` every AIECS_REVOCATION_POLL seconds to disconnect the sockets whose token was
revoked. The gate (:class:`RevocationGate`) checks before any route runs; ``POST /tasks``
checks in its own first round trip instead (:data:`SELF_CHECKED`).

Operators revoke with ``aiecs token revoke --jti ID`` / ``--user USER`` or
:func:`revoke_jti` / :func:`revoke_user`.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from typing import Any

from aiecs_core import ID_PATTERN
from starlette.responses import JSONResponse

from ..store.keys import REVOKED_PREFIX
from .tokens import Identity, TokenError, verify_token

__all__ = ["DEFERRED", "GEN_KEY", "REVOKED_HEADERS", "SELF_CHECKED", "RevocationGate",
           "queue_reads", "reason_of", "revoke_jti", "revoke_user", "revoked", "revoked_many",
           "unauthorized"]

log = logging.getLogger("aiecs.server")
PREFIX = REVOKED_PREFIX
GEN_KEY = PREFIX + "gen"
_SLACK = 60  # seconds of clock skew between the revoking host and the servers

# Keep the later cut-off (a revocation never un-revokes) and the longer expiry.
_RAISE_CUTOFF = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"""


def jti_key(jti: str) -> str:
    return f"{PREFIX}jti:{jti}"


def user_key(user_id: str) -> str:
    return f"{PREFIX}user:{user_id}"


def _bump(client: Any, ttl: int) -> None:
    client.set(GEN_KEY, uuid.uuid4().hex, ex=ttl)


def revoke_jti(client: Any, jti: str, *, max_lifetime: float) -> None:
    """Revoke the token ``jti`` (``client``: a synchronous ``redis.Redis``)."""
    if not isinstance(jti, str) or not 0 < len(jti) <= 128:
        raise ValueError("jti must be a non-empty string of at most 128 characters")
    ttl = int(math.ceil(max_lifetime)) + _SLACK
    client.set(jti_key(jti), "1", ex=ttl)
    _bump(client, ttl)


def revoke_user(client: Any, user_id: str, *, max_lifetime: float,
                before: float | None = None) -> float:
    """Revoke every token of ``user_id`` issued before ``before`` (default: now, including
    tokens issued within the current second). Returns the cut-off."""
    if not isinstance(user_id, str) or not re.fullmatch(ID_PATTERN, user_id):
        raise ValueError(f"user_id {user_id!r} does not match {ID_PATTERN}")
    now = time.time()
    cutoff = float(before) if before is not None else float(math.floor(now) + 1)
    ttl = int(math.ceil(max(0.0, cutoff - now) + max_lifetime)) + _SLACK
    client.eval(_RAISE_CUTOFF, 1, user_key(user_id), repr(cutoff), ttl)
    _bump(client, ttl)
    return cutoff


def _reason(identity: Identity, jti_revoked: Any, cutoff: Any) -> str | None:
    if jti_revoked:
        return "token revoked"
    if cutoff is not None and identity.issued_at < float(cutoff):
        return ("token revoked (all of the user's tokens issued before "
                f"{float(cutoff):.0f} were revoked)")
    return None


def queue_reads(pipe: Any, identity: Identity) -> int:
    """Queue in ``pipe`` (a pipeline, synchronous or not) the reads that say whether
    ``identity``'s token is revoked; returns how many answers they add, for
    :func:`reason_of`. A route that reads Redis anyway checks the token in its own first
    round trip this way (:data:`SELF_CHECKED`)."""
    if identity.jti is not None:
        pipe.exists(jti_key(identity.jti))
    pipe.get(user_key(identity.user_id))
    return 2 if identity.jti is not None else 1


def reason_of(identity: Identity, answers: list[Any]) -> str | None:
    """Why ``identity``'s token is revoked (None: it is not), from the answers of
    :func:`queue_reads`."""
    if identity.jti is not None:
        return _reason(identity, answers[0], answers[1])
    return _reason(identity, 0, answers[0])


async def revoked_many(client: Any, identities: list[Identity]
                       ) -> tuple[bytes | None, list[str | None]]:
    """The list's generation, and for each identity why its token is revoked (None: it
    is not). ``client``: a ``redis.asyncio`` client; Redis errors propagate (callers fail
    closed). The generation is read first: a revocation written after it changes it
    again, so a holder of this answer that polls the generation misses none."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(GEN_KEY)
        counts = [queue_reads(pipe, identity) for identity in identities]
        gen, *answers = await pipe.execute()
    out, at = [], 0
    for identity, n in zip(identities, counts, strict=True):
        out.append(reason_of(identity, answers[at:at + n]))
        at += n
    return gen, out


async def revoked(client: Any, identity: Identity) -> str | None:
    """Why ``identity``'s token is revoked, or None."""
    return (await revoked_many(client, [identity]))[1][0]


#: Requests (method, path) whose route checks the token's revocation itself, in the
#: round trip that reads what it needs anyway, before it reads or writes anything else:
#: ``POST /tasks`` (one round trip fewer per submission). The gate lets them through
#: unchecked and says so in the scope (:data:`DEFERRED`); a route reached any other way
#: (the app mounted under a prefix) finds the gate checked it.
SELF_CHECKED = frozenset({("POST", "/tasks")})
#: The scope key the gate sets when it left the check to the route.
DEFERRED = "aiecs.revocation_deferred"


#: The ``WWW-Authenticate`` of a revoked token.
REVOKED_HEADERS = (("WWW-Authenticate", 'Bearer realm="aiecs", error="invalid_token"'),)


def unauthorized(reason: str) -> JSONResponse:
    """The answer to a revoked token (the gate's and the routes' of :data:`SELF_CHECKED`)."""
    return JSONResponse(
        {"error": {"type": "unauthorized", "message": reason}}, status_code=401,
        headers=dict(REVOKED_HEADERS))


class RevocationGate:
    """ASGI middleware of the HTTP API: a request whose bearer token verifies but is
    revoked is answered 401 before any route runs (routes verify the token themselves; a
    request without one, or with one that does not verify, passes to them). Reads the
    secret, the maximum lifetime and the Redis client from the app's state. Fails closed:
    when the list cannot be read the request is answered 503. The requests of
    :data:`SELF_CHECKED` are checked by their route instead, first thing, with the same
    answers."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if (scope["method"], scope["path"]) in SELF_CHECKED:
                scope[DEFERRED] = True
                await self.app(scope, receive, send)
                return
            refusal = await self._check(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _check(self, scope: Any) -> Any:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        state = scope["app"].state
        try:
            identity = verify_token(token.strip(), state.secret,
                                    max_lifetime=state.token_max_lifetime)
        except TokenError:
            return None  # the route answers 401 with the reason
        try:
            reason = await revoked(state.socket.redis, identity)
        except Exception as exc:  # noqa: BLE001 - fail closed
            log.warning("revocation list unreadable: %s", exc)
            return JSONResponse({"error": {
                "type": "unavailable",
                "message": "the server cannot check tokens right now; retry shortly"}},
                status_code=503)
        if reason is None:
            return None
        return unauthorized(reason)
