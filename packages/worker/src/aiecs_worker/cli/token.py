"""``aiecs token USER_ID`` (``aiecs token issue``) and ``aiecs token revoke``."""

from __future__ import annotations

import click
from aiecs_core import ConfigurationError

from ..server.tokens import OPERATOR_SCOPE, issue_token
from ..settings import get_settings
from .client import ApiClientError, call
from .common import env_has_secret, fail, server_settings, server_url

__all__ = ["token"]


class _TokenGroup(click.Group):
    """``aiecs token USER_ID`` issues a token (``aiecs token issue USER_ID``);
    ``aiecs token revoke ...`` revokes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["issue", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_TokenGroup)
def token() -> None:
    """Issue (``aiecs token USER_ID``) or revoke (``aiecs token revoke``) tokens."""


@token.command("revoke")
@click.option("--jti", default=None, help="Revoke the token with this jti claim.")
@click.option("--user", "user_id", default=None,
              help="Revoke every token of this user issued until now (or --before).")
@click.option("--before", type=float, default=None,
              help="With --user: revoke the tokens issued before this unix time.")
def token_revoke(jti: str | None, user_id: str | None, before: float | None) -> None:
    """Revoke tokens: refused on every HTTP request and socket connect from now on, and
    connected sockets are disconnected within AIECS_REVOCATION_POLL seconds."""
    # deferred: redis and the revocation module (Starlette) serve this command only
    import redis

    from ..server.revocation import revoke_jti, revoke_user
    from ..store.connection import sync_client

    if (jti is None) == (user_id is None):
        fail("give exactly one of --jti and --user", 2)
    if before is not None and user_id is None:
        fail("--before goes with --user", 2)
    max_lifetime = server_settings().aiecs_token_max_lifetime
    client = sync_client(get_settings().state_redis_url, socket_connect_timeout=5)
    try:
        if jti is not None:
            revoke_jti(client, jti, max_lifetime=max_lifetime)
            click.echo(f"revoked token {jti}")
        else:
            cutoff = revoke_user(client, user_id, max_lifetime=max_lifetime, before=before)
            click.echo(f"revoked the tokens of {user_id} issued before {cutoff:.0f}")
    except ValueError as exc:
        fail(str(exc), 2)
    except redis.RedisError as exc:
        fail(f"Redis unreachable: {exc}", 1)
    finally:
        client.close()


def _from_dev_server(url: str, user_id: str) -> str | None:
    """A token for ``user_id`` from the development server at ``url`` (``aiecs dev``
    signs with a secret of its own, which no shell has); None when there is none."""
    try:
        config = call(url, "", "GET", "/config")
        if not (isinstance(config, dict) and config.get("dev") is True):
            return None
        return call(url, "", "POST", "/dev/token", {"user_id": user_id})["token"]
    except (ApiClientError, KeyError, TypeError):
        return None


@token.command("issue")
@click.argument("user_id")
@click.option("--ttl", type=int, default=None,
              help="Lifetime in seconds (default AIECS_TOKEN_TTL, 3600; at most "
                   "AIECS_TOKEN_MAX_LIFETIME).")
@click.option("--operator", is_flag=True,
              help="An operator's token (scope \"operator\"): may set other users' "
                   "budgets, read their data, publish templates and move their labels.")
@click.option("--server", "server_url_", default=None, metavar="URL",
              help="Without AIECS_SECRET_KEY: the development server to ask for the token "
                   "(default AIECS_SERVER_URL or http://AIECS_HOST:AIECS_PORT).")
def token_issue(user_id: str, ttl: int | None, operator: bool,
                server_url_: str | None) -> None:
    """Print a connection token for USER_ID, signed with AIECS_SECRET_KEY (without it, a
    user's token from a running development server, `aiecs dev`)."""
    settings = server_settings()
    if not env_has_secret() and not operator:  # a dev server hands out users' tokens only
        url = server_url(server_url_)
        dev = _from_dev_server(url, user_id)
        if dev is not None:
            click.echo(f"a development token from {url} (its lifetime is the server's)",
                       err=True)
            click.echo(dev)
            return
        fail("AIECS_SECRET_KEY is not set; fix: set it to the progress server's secret (a "
             "token is signed with it), or run aiecs dev, which hands tokens out (no "
             f"development server answers at {url}; --server URL)", 2)
    if ttl is not None and ttl > settings.aiecs_token_max_lifetime:
        fail(f"--ttl {ttl} is longer than AIECS_TOKEN_MAX_LIFETIME "
             f"({settings.aiecs_token_max_lifetime}); the server would refuse the token", 2)
    try:
        click.echo(issue_token(user_id, settings.secret(), ttl or settings.aiecs_token_ttl,
                               scopes=(OPERATOR_SCOPE,) if operator else ()))
    except (ConfigurationError, ValueError) as exc:
        fail(str(exc), 2)
