"""Connection tokens: who a Socket.IO connection or an API call belongs to.

A token is a JSON Web Token signed with HMAC-SHA256 and ``AIECS_SECRET_KEY``::

    {"sub": "<user_id>", "aud": "aiecs", "iat": <issued>, "exp": <expiry>}

JWT rather than a home-made format so that the API layer in front of aiecs, in whatever
language it is written, can mint tokens with its own JWT library and the shared secret.
Verification pins the algorithm to HS256 (no ``alg: none``, no key confusion), compares
signatures in constant time and requires ``sub``, ``exp`` and ``aud``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import jwt
from aiecs_core import ID_PATTERN

__all__ = ["ALGORITHM", "AUDIENCE", "TokenError", "Identity", "issue_token", "verify_token"]

ALGORITHM = "HS256"
AUDIENCE = "aiecs"
_ID = re.compile(ID_PATTERN)


class TokenError(Exception):
    """The token is missing, malformed, wrongly signed or expired (``str()`` says which)."""


@dataclass(frozen=True)
class Identity:
    """A verified token."""

    user_id: str
    expires_at: float


def issue_token(user_id: str, secret: str, ttl: float = 3600, *, now: float | None = None) -> str:
    """A token for ``user_id`` valid for ``ttl`` seconds: what an API layer hands a client."""
    if not isinstance(user_id, str) or not _ID.match(user_id):
        raise ValueError(f"user_id {user_id!r} does not match {ID_PATTERN}")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    issued = int(now if now is not None else time.time())
    claims = {"sub": user_id, "aud": AUDIENCE, "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: object, secret: str) -> Identity:
    """The identity a token proves, or :class:`TokenError` (fails closed on anything odd)."""
    if not token:
        raise TokenError("missing token")
    if not isinstance(token, str) or len(token) > 4096:
        raise TokenError("malformed token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["sub", "exp", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.InvalidSignatureError:
        raise TokenError("invalid token signature") from None
    except jwt.DecodeError:
        raise TokenError("malformed token") from None
    except jwt.InvalidTokenError as exc:  # audience, missing claims, bad iat, ...
        raise TokenError(f"invalid token: {exc}") from None
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not _ID.match(user_id):
        raise TokenError("invalid token: bad subject")
    return Identity(user_id=user_id, expires_at=float(claims["exp"]))
