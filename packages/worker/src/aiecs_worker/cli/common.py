"""What the ``aiecs`` commands share: exit codes, failing with a message, the options and
the token of a command that talks to the progress server, JSON arguments."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from aiecs_core import ConfigurationError

from ..server.settings import ServerSettings, load_server_settings
from ..server.tokens import OPERATOR_SCOPE, issue_token
from .client import ApiClientError, call

__all__ = ["DEV_USER", "EXIT_CODES", "EXIT_WATCH_ERROR", "api", "client_options",
           "client_token", "connect", "env_has_secret", "fail", "json_arg", "server_settings",
           "server_url", "show"]

#: Exit code of ``watch`` (and ``submit --watch``) per final status.
EXIT_CODES = {"completed": 0, "failed": 1, "timed_out": 3, "cancelled": 4}
#: Exit code when the watch could not be done (refused token, unknown task, unreachable).
EXIT_WATCH_ERROR = 5
#: The user a development token is asked for when --user is not given (``aiecs dev``'s).
DEV_USER = "dev"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def server_settings() -> ServerSettings:
    try:
        return load_server_settings()
    except ConfigurationError as exc:
        fail(str(exc), 2)


def env_has_secret() -> bool:
    return server_settings().secret_from_environment()


def client_token(token_opt: str | None, user: str | None, url: str, *,
                 operator: bool = False) -> str:
    """--token / AIECS_TOKEN; else a short-lived token for --user signed locally with
    AIECS_SECRET_KEY; else, when the server at ``url`` is in development mode (``aiecs
    dev``), a token from its ``/dev/token`` for --user (default ``dev``). ``operator``:
    the signed or development token has the operator scope."""
    if token_opt:
        return token_opt
    settings = server_settings()
    if settings.aiecs_token is not None:
        return settings.aiecs_token.get_secret_value()
    if user and env_has_secret():
        try:
            return issue_token(user, settings.secret(), 3600,
                               scopes=(OPERATOR_SCOPE,) if operator else ())
        except (ConfigurationError, ValueError) as exc:
            fail(str(exc), 2)
    dev = _dev_token(url, user or DEV_USER, operator)
    if dev is not None:
        click.echo(f"using a development token for user {user or DEV_USER!r} from {url}",
                   err=True)
        return dev
    fail("no token: pass --token (or set AIECS_TOKEN), or --user with AIECS_SECRET_KEY set "
         f"(the server at {url} is not a development server, which would hand one out)", 2)


def _dev_token(url: str, user: str, operator: bool = False) -> str | None:
    """A token from a development server's ``/dev/token``; None when the server is not
    in development mode (or does not answer)."""
    try:
        config = call(url, "", "GET", "/config")
        if not (isinstance(config, dict) and config.get("dev") is True):
            return None
        body = {"user_id": user, **({"operator": True} if operator else {})}
        return call(url, "", "POST", "/dev/token", body)["token"]
    except ApiClientError as exc:
        if exc.status == 0:  # unreachable: say so, it is the likelier problem
            fail(f"{exc.message} (is `aiecs dev` or `aiecs serve` running? pass --server)",
                 EXIT_WATCH_ERROR)
        return None


def server_url(url: str | None) -> str:
    return (url or server_settings().server_url()).rstrip("/")


def connect(url: str | None, token_opt: str | None, user: str | None, *,
            operator: bool = False) -> tuple[str, str]:
    """The server's URL and the token to use with it (the three client options);
    ``operator``: a token this command signs or asks for has the operator scope."""
    url = server_url(url)
    return url, client_token(token_opt, user, url, operator=operator)


_client_options = [
    click.option("--server", "server_url", default=None, metavar="URL",
                 help="Progress server (default AIECS_SERVER_URL or http://AIECS_HOST:AIECS_PORT)."),
    click.option("--token", "token_opt", default=None, envvar="AIECS_TOKEN",
                 help="Token to authenticate with (default AIECS_TOKEN)."),
    click.option("--user", default=None, metavar="USER_ID",
                 help="Sign a token for this user with AIECS_SECRET_KEY instead (or, from a "
                      "development server, ask it for one; default user 'dev')."),
]


def client_options(func):
    """``--server``, ``--token``, ``--user``: what a command talking to the server takes."""
    for option in reversed(_client_options):
        func = option(func)
    return func


def api(url: str, tok: str, method: str, path: str, body: Any = None, *,
        refused: str = "") -> Any:
    """One request of the task API; a refusal ends the command (exit 5) with its reason
    (prefixed with ``refused``)."""
    try:
        return call(url, tok, method, path, body)
    except ApiClientError as exc:
        fail(f"{refused}{exc.message} ({exc.status} {exc.type})", EXIT_WATCH_ERROR)


def show(path: str, as_json: bool, render: Callable[[Any], int], server_url_, token_opt,
         user) -> NoReturn:
    """GET ``path`` and print it (as JSON, or rendered); exit with the render's code."""
    url, tok = connect(server_url_, token_opt, user)
    view = api(url, tok, "GET", path)
    if as_json:
        click.echo(json.dumps(view, indent=2))
        sys.exit(0)
    sys.exit(render(view))


def json_arg(value: str | None, name: str, *, lists: bool = False) -> Any:
    """A JSON object (or, with ``lists``, an array) given inline, as @FILE or - (stdin)."""
    if value is None:
        return {}
    text = value
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(str(exc), param_hint=name) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=name) from None
    if not (isinstance(data, dict) or lists and isinstance(data, list)):
        raise click.BadParameter("must be a JSON object" + " or array" * lists,
                                 param_hint=name)
    return data
