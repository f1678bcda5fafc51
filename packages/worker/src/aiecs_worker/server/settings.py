"""Settings of the progress server and the command line, read from the environment.

Redis, the Socket.IO channel and the event log's bounds are the worker's settings
(:mod:`aiecs_worker.settings`); this module adds what only the server needs, in the same
model family (:class:`~aiecs_worker.settings.EnvSettings`: one loader, one naming of
variables, one error format).
"""

from __future__ import annotations

import functools
import secrets
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from ..settings import EnvSettings, config_error
from .admission import SocketLimits
from .replay import ReplayLimits

__all__ = ["DEV_ORIGINS", "MIN_SECRET_LENGTH", "ServerSettings", "get_server_settings",
           "load_server_settings"]

#: Origins development mode (AIECS_DEV, ``aiecs dev``) also allows: front-end dev servers.
DEV_ORIGINS = ("http://localhost:3000", "http://localhost:3001")

#: HS256 keys shorter than the hash output (32 bytes) weaken the signature (RFC 7518 3.2).
MIN_SECRET_LENGTH = 32


class ServerSettings(EnvSettings):
    """Every server setting, its environment variable and its default."""

    _what: ClassVar[str] = "aiecs server"
    #: True when AIECS_SECRET_KEY was not given and development mode made one up.
    _secret_generated: bool = PrivateAttr(default=False)

    aiecs_secret_key: SecretStr | None = None
    """AIECS_SECRET_KEY: HMAC key of connection tokens (at least 32 characters). Required
    unless AIECS_DEV is set, in which case a random one is made for the process."""
    cors_allowed_origins: list[str] = Field(default_factory=list)
    """CORS_ALLOWED_ORIGINS: comma-separated origins allowed to call the server from a
    browser (Socket.IO and HTTP). Default none: only the server's own origin (its page),
    which is always allowed. In development mode, :data:`DEV_ORIGINS` are added."""
    aiecs_host: str = "127.0.0.1"
    """AIECS_HOST: interface ``aiecs serve`` binds to."""
    aiecs_port: int = Field(default=8000, ge=1, le=65535)
    """AIECS_PORT: port ``aiecs serve`` listens on."""
    aiecs_public_origins: list[str] = Field(default_factory=list)
    """AIECS_PUBLIC_ORIGINS: comma-separated origins the page itself is served from when
    not ``http://localhost:PORT`` / ``http://127.0.0.1:PORT`` (behind a proxy, say)."""
    aiecs_dev: bool = False
    """AIECS_DEV: development mode: a generated secret and ``POST /dev/token`` (which hands
    a token to anyone who asks). Never set it on a server others can reach."""
    aiecs_token_ttl: int = Field(default=3600, gt=0)
    """AIECS_TOKEN_TTL: default lifetime of issued tokens, seconds."""
    aiecs_token_max_lifetime: int = Field(default=86400, gt=0)
    """AIECS_TOKEN_MAX_LIFETIME: longest lifetime (``exp - iat``, seconds) a token may have;
    a token claiming more, or without ``iat`` or ``exp``, is refused."""
    aiecs_revocation_poll: float = Field(default=1.0, gt=0, le=60)
    """AIECS_REVOCATION_POLL: seconds between checks of the revocation list for connected
    sockets (a socket whose token or user was revoked is disconnected within this)."""
    aiecs_socket_auth_timeout: float = Field(default=5.0, gt=0, le=300)
    """AIECS_SOCKET_AUTH_TIMEOUT: seconds an Engine.IO session may stay open without a
    Socket.IO connection authenticated by a token; then the server closes it."""
    aiecs_max_sockets_per_user: int = Field(default=50, ge=1)
    """AIECS_MAX_SOCKETS_PER_USER: authenticated Socket.IO connections one user may hold
    on one server process; one more is refused (``too_many_connections``)."""
    aiecs_max_sockets_per_address: int = Field(default=200, ge=1)
    """AIECS_MAX_SOCKETS_PER_ADDRESS: Engine.IO sessions (authenticated or not) one client
    address may hold on one server process; one more is refused at the handshake. The
    address is the peer the server sees (behind a proxy: the proxy's; ``aiecs serve``
    ignores forwarded headers)."""
    aiecs_max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    """AIECS_MAX_MESSAGE_BYTES: largest Socket.IO message a client may send."""
    aiecs_replay_concurrency: int = Field(default=2, ge=1)
    """AIECS_REPLAY_CONCURRENCY: replays (``subscribe`` answers) one connection streams at
    once; its further subscribes wait their turn."""
    aiecs_replay_user_concurrency: int = Field(default=4, ge=1)
    """AIECS_REPLAY_USER_CONCURRENCY: replays all connections of one user stream at once
    (per server process)."""
    aiecs_replay_backlog: int = Field(default=32, ge=1)
    """AIECS_REPLAY_BACKLOG: subscribes one connection may have in flight (streaming or
    waiting); one more is refused with ``too_many_replays``."""
    aiecs_replay_user_backlog: int = Field(default=64, ge=1)
    """AIECS_REPLAY_USER_BACKLOG: subscribes all connections of one user may have in flight
    (per server process); one more is refused with ``too_many_replays``."""
    aiecs_replay_chunk: int = Field(default=200, ge=1, le=10_000)
    """AIECS_REPLAY_CHUNK: events per ``task_events`` batch of a replay; the next batch
    waits until the connection took this one, yielding to other connections meanwhile."""
    aiecs_subscribe_rate: float = Field(default=10.0, gt=0)
    """AIECS_SUBSCRIBE_RATE: subscribes per second one connection may make, sustained
    (token bucket); more are refused with ``rate_limited`` and a ``retry_after``."""
    aiecs_subscribe_burst: int = Field(default=40, ge=1)
    """AIECS_SUBSCRIBE_BURST: subscribes one connection may make at once (the bucket's
    size: a page resubscribing to its tasks after a reconnect)."""
    aiecs_subscribe_refusals_max: int = Field(default=100, ge=1)
    """AIECS_SUBSCRIBE_REFUSALS_MAX: subscribes refused in a row (rate or backlog) after
    which the connection is disconnected as abusive."""
    aiecs_max_group_body_bytes: int = Field(default=16 * 2**20, ge=64 * 1024)
    """AIECS_MAX_GROUP_BODY_BYTES: largest body of ``POST /batches`` and ``POST
    /workflows``, refused before it is read in full (413); each item's or step's
    input_data + context is also held to AIECS_MAX_PAYLOAD_BYTES."""
    aiecs_health_interval: float = Field(default=2.0, gt=0)
    """AIECS_HEALTH_INTERVAL: seconds between pub/sub listener probes (see /healthz)."""
    aiecs_server_url: str | None = None
    """AIECS_SERVER_URL: where ``aiecs submit`` / ``aiecs watch`` find the server (default
    ``http://AIECS_HOST:AIECS_PORT``)."""
    aiecs_token: SecretStr | None = None
    """AIECS_TOKEN: token ``aiecs submit`` / ``aiecs watch`` authenticate with (default:
    one is signed with AIECS_SECRET_KEY for ``--user``)."""

    @field_validator("cors_allowed_origins", "aiecs_public_origins", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            v = [part.strip() for part in v.split(",")]
        if isinstance(v, list | tuple):
            return [str(o).strip().rstrip("/") for o in v if str(o).strip()]
        return v

    @field_validator("cors_allowed_origins", "aiecs_public_origins")
    @classmethod
    def _explicit(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin == "*" or "*" in origin:
                raise ValueError("wildcards are not accepted: list each origin explicitly")
            if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
                raise ValueError(
                    f"{origin!r} is not an origin (scheme://host[:port], no path)"
                )
        return v

    @model_validator(mode="after")
    def _secret(self) -> ServerSettings:
        if self.aiecs_secret_key is None:
            if self.aiecs_dev:
                self.aiecs_secret_key = SecretStr(secrets.token_urlsafe(48))
                self._secret_generated = True
        elif len(self.aiecs_secret_key.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"AIECS_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters; fix: "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return self

    @model_validator(mode="after")
    def _ttl_within_max(self) -> ServerSettings:
        if self.aiecs_token_ttl > self.aiecs_token_max_lifetime:
            raise ValueError(
                f"AIECS_TOKEN_TTL ({self.aiecs_token_ttl}) is longer than "
                f"AIECS_TOKEN_MAX_LIFETIME ({self.aiecs_token_max_lifetime}); fix: lower the "
                "first or raise the second")
        return self

    def secret_from_environment(self) -> bool:
        """True when AIECS_SECRET_KEY was set (not made up for development mode)."""
        return self.aiecs_secret_key is not None and not self._secret_generated

    def socket_limits(self) -> SocketLimits:
        """The socket admission limits as :class:`~.admission.SocketLimits`."""
        return SocketLimits(
            auth_timeout=self.aiecs_socket_auth_timeout,
            per_user=self.aiecs_max_sockets_per_user,
            per_address=self.aiecs_max_sockets_per_address,
        )

    def replay_limits(self) -> ReplayLimits:
        """The subscribe/replay limits as :class:`~.replay.ReplayLimits`."""
        return ReplayLimits(
            concurrency=self.aiecs_replay_concurrency,
            user_concurrency=self.aiecs_replay_user_concurrency,
            backlog=self.aiecs_replay_backlog,
            user_backlog=self.aiecs_replay_user_backlog,
            chunk=self.aiecs_replay_chunk,
            rate=self.aiecs_subscribe_rate,
            burst=self.aiecs_subscribe_burst,
            refusals_max=self.aiecs_subscribe_refusals_max,
        )

    def secret(self) -> str:
        """The signing key, or a ConfigurationError naming AIECS_SECRET_KEY."""
        if self.aiecs_secret_key is None:
            raise config_error(
                "AIECS_SECRET_KEY", "is not set: the progress server refuses to start without "
                "a token signing key",
                fix="set it to at least 32 random characters (python -c 'import secrets; "
                    "print(secrets.token_urlsafe(48))'), or AIECS_DEV=1 for a throwaway one "
                    "on a dev machine",
            )
        return self.aiecs_secret_key.get_secret_value()

    def own_origins(self, port: int | None = None) -> list[str]:
        """Origins the page is served from: always allowed to call the server."""
        port = port or self.aiecs_port
        hosts = {"localhost", "127.0.0.1"}
        if self.aiecs_host not in ("0.0.0.0", "::", ""):
            hosts.add(self.aiecs_host)
        own = [f"http://{h}:{port}" for h in sorted(hosts)]
        return own + [o for o in self.aiecs_public_origins if o not in own]

    def allowed_origins(self, port: int | None = None) -> list[str]:
        """The server's own origins, CORS_ALLOWED_ORIGINS and, in development mode only,
        :data:`DEV_ORIGINS` (never empty, never ``*``)."""
        out = list(self.own_origins(port))
        extra = [*self.cors_allowed_origins, *(DEV_ORIGINS if self.aiecs_dev else ())]
        out += [o for o in extra if o not in out]
        return out

    def server_url(self) -> str:
        """Where the CLI finds the server: AIECS_SERVER_URL, else AIECS_HOST:AIECS_PORT."""
        if self.aiecs_server_url:
            return self.aiecs_server_url.rstrip("/")
        host = "127.0.0.1" if self.aiecs_host in ("0.0.0.0", "::", "") else self.aiecs_host
        return f"http://{host}:{self.aiecs_port}"


def load_server_settings(**overrides: Any) -> ServerSettings:
    """Read server settings; raise ConfigurationError naming the offending variable."""
    return ServerSettings.load(**overrides)


@functools.lru_cache(maxsize=1)
def get_server_settings() -> ServerSettings:
    """The process's server settings, read once."""
    return load_server_settings()
