"""Connection tokens: who a Socket.IO connection or an API call belongs to.

A token is a JSON Web Token signed with HMAC-SHA256 and ``AIECS_SECRET_KEY``::

    {"sub": "<user_id>", "aud": "aiecs", "iat": <issued>, "exp": <expiry>, "jti": "<id>"}

JWT rather than a home-made format so that the API layer in front of aiecs, in whatever
language it is written, can mint tokens with its own JWT library and the shared secret.
Verification pins the algorithm to HS256 (no ``alg: none``, no key confusion), compares
signatures in constant time and requires ``sub``, ``iat``, ``exp`` and ``aud``; a token
whose lifetime (``exp - iat``) is longer than AIECS_TOKEN_MAX_LIFETIME is refused, so a
leaked token is useful for a bounded time. ``jti`` (optional for tokens minted elsewhere;
at most 128 characters) names the token for revocation (:mod:`.revocation`).

``scope`` (optional): space-separated scopes. ``operator`` (:data:`OPERATOR_SCOPE`) lets
the token's holder administer other users (``PUT /budgets/{user}``, cross-user reads):
check it with :func:`is_operator`, the one place that decides. ``aiecs token USER
--operator`` mints one.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from dataclasses import dataclass

import jwt
from aiecs_core import ID_PATTERN

__all__ = ["ALGORITHM", "AUDIENCE", "OPERATOR_SCOPE", "Identity", "TokenError",
           "is_operator", "issue_token", "verify_token"]

ALGORITHM = "HS256"
AUDIENCE = "aiecs"
_ID = re.compile(ID_PATTERN)
#: AIECS_TOKEN_MAX_LIFETIME's default: verification without settings uses it.
DEFAULT_MAX_LIFETIME = 86400
#: The scope of an operator's token.
OPERATOR_SCOPE = "operator"
_SCOPE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}( [A-Za-z0-9_.:\-]{1,64}){0,15}$")


class TokenError(Exception):
    """The token is missing, malformed, wrongly signed or expired (``str()`` says which)."""


@dataclass(frozen=True)
class Identity:
    """A verified token."""

    user_id: str
    expires_at: float
    issued_at: float = 0.0
    jti: str | None = None
    scopes: frozenset[str] = frozenset()
    """The token's ``scope`` claim, split on spaces."""


def is_operator(identity: Identity | None) -> bool:
    """Whether a verified token grants operator rights (the ``operator`` scope)."""
    return identity is not None and OPERATOR_SCOPE in identity.scopes


def issue_token(user_id: str, secret: str, ttl: float = 3600, *, now: float | None = None,
                scopes: tuple[str, ...] = ()) -> str:
    """A token for ``user_id`` valid for ``ttl`` seconds: what an API layer hands a client
    (``scopes``: its ``scope`` claim, e.g. ``("operator",)``)."""
    if not isinstance(user_id, str) or not _ID.fullmatch(user_id):
        raise ValueError(f"user_id {user_id!r} does not match {ID_PATTERN}")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    issued = int(now if now is not None else time.time())
    claims = {"sub": user_id, "aud": AUDIENCE, "iat": issued, "exp": issued + int(ttl),
              "jti": uuid.uuid4().hex}
    if scopes:
        scope = " ".join(scopes)
        if not _SCOPE.fullmatch(scope):
            raise ValueError(f"invalid scopes {scopes!r}")
        claims["scope"] = scope
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: object, secret: str, *,
                 max_lifetime: float = DEFAULT_MAX_LIFETIME) -> Identity:
    """The identity a token proves, or :class:`TokenError` (fails closed on anything odd).

    Revocation is not checked here (it needs Redis): see :mod:`.revocation`.

    A token that verified is remembered (the last 1,024, keyed by the token, the secret
    and the maximum lifetime), so the HMAC check and the claims' checks run once per token
    instead of twice per request (the revocation gate, then the route): what made it valid
    cannot change but its expiry, which is checked at every call. Nothing else is stale: a
    changed secret is another key, and revocation is checked per request elsewhere."""
    if not token:
        raise TokenError("missing token")
    if not isinstance(token, str) or len(token) > 4096:
        raise TokenError("malformed token")
    identity = _verified(token, secret, max_lifetime)
    if time.time() >= identity.expires_at:  # PyJWT's test: expired at exp, no leeway
        raise TokenError("token expired")
    return identity


def _verify(token: str, secret: str, max_lifetime: float) -> Identity:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["sub", "exp", "aud", "iat"]},
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
    if not isinstance(user_id, str) or not _ID.fullmatch(user_id):
        raise TokenError("invalid token: bad subject")
    issued, expires = claims["iat"], claims["exp"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool)
               for v in (issued, expires)):
        raise TokenError("invalid token: iat and exp must be numbers")
    if expires - issued > max_lifetime:
        raise TokenError(f"invalid token: lifetime (exp - iat) longer than {max_lifetime:g} s")
    jti = claims.get("jti")
    if jti is not None and not (isinstance(jti, str) and 0 < len(jti) <= 128):
        raise TokenError("invalid token: bad jti")
    scope = claims.get("scope")
    if scope is not None and not (isinstance(scope, str) and _SCOPE.fullmatch(scope)):
        raise TokenError("invalid token: bad scope")
    return Identity(user_id=user_id, expires_at=float(expires), issued_at=float(issued),
                    jti=jti, scopes=frozenset(scope.split()) if scope else frozenset())


#: Tokens verified lately, the last 1,024 (a failure is not kept: it is checked again).
_verified = functools.lru_cache(maxsize=1024)(_verify)
