"""``aiecs history``, ``aiecs usage`` (over the history API) and ``aiecs forget USER``
(the history database and Redis directly, like ``aiecs token revoke``: an operator's
command on a host with the deployment's settings)."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlencode

import click

from .client import ApiClientError, stream_lines
from .common import EXIT_WATCH_ERROR, api, client_options, connect, fail

__all__ = ["forget_command", "history_command", "usage_command"]

_GROUPS = ("day", "provider", "model", "template")


def _filter_options(func):
    options = [
        click.option("--status", default=None,
                     help="Only this status (completed, failed, timed_out, cancelled, ...)."),
        click.option("--service", default=None, help="Only this service (provider)."),
        click.option("--operation", default=None, help="Only this operation."),
        click.option("--model", default=None, help="Only this model."),
        click.option("--template", default=None, help="Only runs of this template."),
        click.option("--template-version", type=int, default=None,
                     help="With --template: only this version."),
        click.option("--batch-id", default=None, help="Only this batch's items."),
        click.option("--workflow-id", default=None, help="Only this workflow's steps."),
        click.option("--since", default=None, metavar="TIME",
                     help="Finished at or after TIME (ISO-8601, e.g. 2026-12-01, or UNIX "
                          "seconds)."),
        click.option("--until", default=None, metavar="TIME", help="Finished before TIME."),
        click.option("--for-user", default=None, metavar="USER_ID",
                     help="Another user's (an operator token; without it an operator sees "
                          "every user's)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _query(params: dict[str, Any]) -> str:
    names = {"for_user": "user"}
    out = {names.get(k, k): v for k, v in params.items() if v is not None}
    return "?" + urlencode(out) if out else ""


def _money(cost: float | None) -> str:
    return "-" if cost is None else f"${cost:.4f}"


def _print_rows(items: list[dict[str, Any]]) -> None:
    click.echo(f"{'FINISHED (UTC)':<20} {'TASK':<28} {'SERVICE/OPERATION':<26} "
               f"{'MODEL':<20} {'STATUS':<10} {'TOKENS IN/OUT':>14} {'COST':>10}")
    for r in items:
        finished = (r.get("finished_at") or "")[:19].replace("T", " ")
        task = f"{r['task_id']}/{r['step']}"
        op = f"{r.get('service')}/{r.get('operation')}"
        tokens = f"{r.get('input_tokens', 0)}/{r.get('output_tokens', 0)}"
        click.echo(f"{finished:<20} {task[:28]:<28} {op[:26]:<26} "
                   f"{(r.get('model') or '-')[:20]:<20} {r['status']:<10} {tokens:>14} "
                   f"{_money(r.get('cost')):>10}")


@click.command("history")
@_filter_options
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True,
              help="Executions per page.")
@click.option("--cursor", default=None, help="The page after this cursor (printed at the "
                                             "end of the previous page).")
@click.option("--all", "all_pages", is_flag=True, help="Every page, not only the first.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer (one page).")
@click.option("--ndjson", is_flag=True,
              help="Export every match, one JSON row per line, streamed.")
@client_options
def history_command(status, service, operation, model, template, template_version, batch_id,
                    workflow_id, since, until, for_user, limit, cursor, all_pages, as_json,
                    ndjson, server_url, token_opt, user):
    """Your executions, newest first, from the history database (GET /executions)."""
    params = dict(status=status, service=service, operation=operation, model=model,
                  template=template, template_version=template_version, batch_id=batch_id,
                  workflow_id=workflow_id, since=since, until=until, for_user=for_user)
    url, tok = connect(server_url, token_opt, user)
    if ndjson:
        _export(url, tok, _query({**params, "format": "ndjson"}))
        return
    page = api(url, tok, "GET", "/executions" + _query({**params, "limit": limit,
                                                        "cursor": cursor}))
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    _print_rows(page["items"])
    while all_pages and page["next_cursor"]:
        page = api(url, tok, "GET", "/executions" + _query(
            {**params, "limit": limit, "cursor": page["next_cursor"]}))
        _print_rows(page["items"])
    if page["next_cursor"]:
        click.echo(f"more: --cursor {page['next_cursor']}", err=True)


def _export(url: str, tok: str, query: str) -> None:
    failed: list[str] = []

    def line(raw: bytes) -> None:
        if raw.startswith(b'{"error"'):
            failed.append(json.loads(raw)["error"]["message"])
            return
        sys.stdout.buffer.write(raw)

    try:
        stream_lines(url, tok, "/executions" + query, line)
    except ApiClientError as exc:
        fail(f"{exc.message} ({exc.status} {exc.type})", EXIT_WATCH_ERROR)
    sys.stdout.flush()
    if failed:
        fail(f"export cut short: {failed[0]}", EXIT_WATCH_ERROR)


@click.command("usage")
@click.option("--by", "group_by", type=click.Choice(_GROUPS), default="day",
              show_default=True, help="Group by UTC day, provider (service), model or "
                                      "template version.")
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@client_options
def usage_command(group_by, status, service, operation, model, template, template_version,
                  batch_id, workflow_id, since, until, for_user, as_json, server_url,
                  token_opt, user):
    """Executions, tokens and cost summed per day, provider, model or template (GET /usage)."""
    params = dict(group_by=group_by, status=status, service=service, operation=operation,
                  model=model, template=template, template_version=template_version,
                  batch_id=batch_id, workflow_id=workflow_id, since=since, until=until,
                  for_user=for_user)
    url, tok = connect(server_url, token_opt, user)
    out = api(url, tok, "GET", "/usage" + _query(params))
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"{group_by.upper():<32} {'EXECUTIONS':>10} {'TOKENS IN':>12} "
               f"{'TOKENS OUT':>12} {'COST':>12}")
    for g in [*out["groups"], {**out["total"], "key": "total"}]:
        unpriced = f"  ({g['unpriced']} unpriced)" if g.get("unpriced") else ""
        click.echo(f"{str(g['key'] if g['key'] is not None else '-')[:32]:<32} "
                   f"{g['executions']:>10} {g['input_tokens']:>12} {g['output_tokens']:>12} "
                   f"{_money(g['cost']):>12}{unpriced}")


@click.command("forget")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget_command(user_id: str, yes: bool) -> None:
    """Delete USER_ID's history: rows, payloads and event logs in the history database
    (AIECS_DATABASE_URL), and the states and logs of their ended executions in Redis."""
    import re

    import redis
    from aiecs_core import ID_PATTERN

    from ..history.database import DatabaseUnavailable, HistoryDatabase
    from ..history.forget import forget
    from ..settings import get_settings
    from ..store.connection import sync_client

    if not re.fullmatch(ID_PATTERN, user_id):
        fail(f"USER_ID must match {ID_PATTERN}", 2)
    settings = get_settings()
    if not yes:
        click.confirm(f"Delete every history row, payload and event log of {user_id!r}, "
                      "and their ended executions in Redis?", abort=True)
    database = HistoryDatabase(settings.database_url,
                               timeout=max(settings.aiecs_database_timeout, 300))
    client = sync_client(settings.state_redis_url, socket_connect_timeout=5,
                         socket_timeout=30)
    try:
        out = database.run_sync(lambda engine: forget(engine, client, user_id))
    except DatabaseUnavailable as exc:
        fail(f"the history database is unavailable: {exc.reason}", 1)
    except redis.RedisError as exc:
        fail(f"the database rows are deleted, but Redis is unreachable ({exc}); run "
             "`aiecs forget` again", 1)
    finally:
        client.close()
        database.close()
    db, r = out["database"], out["redis"]
    click.echo(f"forgot {user_id}: {db['executions']} executions, {db['payloads']} payloads, "
               f"{db['events']} event logs; Redis: {r['tasks']} tasks, {r['states']} ended "
               f"executions" + (f" ({r['live']} not ended, kept)" if r["live"] else ""))
