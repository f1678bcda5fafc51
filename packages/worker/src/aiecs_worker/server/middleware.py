"""ASGI middleware of the HTTP API: the origin guard and the security headers (the
revocation gate is :class:`.revocation.RevocationGate`)."""

from __future__ import annotations

from .errors import error_response

__all__ = ["SECURITY_HEADERS", "OriginGuard", "SecurityHeaders"]

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
]


class OriginGuard:
    """Refuse (403) any HTTP request that carries an Origin not explicitly allowed.

    CORS headers only stop a browser from *reading* a response; a cross-site POST or
    DELETE would still run. Requests without Origin (curl, the CLI) are not browsers'
    cross-site requests and pass.
    """

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = set(allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
            if origin is not None and origin.decode("latin-1") not in self.allowed:
                response = error_response(
                    403, "forbidden_origin",
                    f"origin {origin.decode('latin-1')!r} is not allowed "
                    "(add it to CORS_ALLOWED_ORIGINS)",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)
