"""``aiecs budget show [USER]`` and ``aiecs budget set USER BUDGETS``: users' budgets over
the task API (docs/budgets.md). Another user's need an operator token: ``--token`` (from
``aiecs token ME --operator``), or one signed locally with AIECS_SECRET_KEY for ``--user``."""

from __future__ import annotations

import json
from typing import Any

import click
from aiecs_core import ConfigurationError

from ..server.tokens import OPERATOR_SCOPE, issue_token
from .common import api, client_options, connect, fail, json_arg, server_settings, server_url

__all__ = ["budget", "describe"]


def describe(row: dict[str, Any]) -> str:
    """One line per budget: period, kind, spent, reserved, remaining, limits, reset."""
    def amount(v: Any) -> str:
        if v is None:
            return "-"
        return f"${v:.6g}" if row["kind"] == "usd" else f"{v}"

    return (f"{row['period']:<5} {row['kind']:<6} spent {amount(row['spent'])}  reserved "
            f"{amount(row['reserved'])}  remaining {amount(row['remaining'])}  soft "
            f"{amount(row['soft'])}  hard {amount(row['hard'])}  resets {row['resets_at']}")


def _operator_connect(server_url_: str | None, token_opt: str | None, user: str | None
                      ) -> tuple[str, str]:
    """The server and an operator token: --token as given, else one signed locally for
    --user (default ``operator``) with AIECS_SECRET_KEY."""
    url = server_url(server_url_)
    if token_opt:
        return url, token_opt
    settings = server_settings()
    if settings.aiecs_token is not None:
        return url, settings.aiecs_token.get_secret_value()
    if not settings.secret_from_environment():
        fail("an operator token is needed: pass --token (from `aiecs token ME --operator`) "
             "or set AIECS_SECRET_KEY to sign one", 2)
    try:
        return url, issue_token(user or "operator", settings.secret(), 600,
                                scopes=(OPERATOR_SCOPE,))
    except (ConfigurationError, ValueError) as exc:
        fail(str(exc), 2)


def _print(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    rows = view["budgets"]
    click.echo(f"budgets of {view['user_id']} ({view['source']}):" if rows else
               f"no budgets for {view['user_id']} ({view['source']})")
    for row in rows:
        click.echo("  " + describe(row))


@click.group()
def budget() -> None:
    """Budgets per user (money and tokens, per day and month): show, set."""


@budget.command("show")
@click.argument("user_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the budgets as JSON.")
@client_options
def budget_show(user_id, as_json, server_url, token_opt, user):
    """Show your budgets and this period's spend, or USER_ID's (operator token)."""
    if user_id is None:
        url, tok = connect(server_url, token_opt, user)
        view = api(url, tok, "GET", "/budget")
    else:
        url, tok = _operator_connect(server_url, token_opt, user)
        view = api(url, tok, "GET", f"/budgets/{user_id}")
    _print(view, as_json)


@budget.command("set")
@click.argument("user_id")
@click.argument("budgets", required=False)
@click.option("--default", "to_default", is_flag=True,
              help="Remove USER_ID's own budgets: AIECS_BUDGETS applies again.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@client_options
def budget_set(user_id, budgets, to_default, as_json, server_url, token_opt, user):
    """Set USER_ID's budgets (operator token): BUDGETS is a JSON list (inline, @FILE or
    -) of {"period": "day"|"month", "kind": "usd"|"tokens", "soft": x, "hard": x}; [] for
    none at all."""
    if (budgets is None) == (not to_default):
        fail("give BUDGETS (a JSON list) or --default", 2)
    rows = None if to_default else json_arg(budgets, "BUDGETS", lists=True)
    if rows is not None and not isinstance(rows, list):
        fail("BUDGETS must be a JSON list", 2)
    url, tok = _operator_connect(server_url, token_opt, user)
    view = api(url, tok, "PUT", f"/budgets/{user_id}", {"budgets": rows},
               refused="budgets refused: ")
    _print(view, as_json)
