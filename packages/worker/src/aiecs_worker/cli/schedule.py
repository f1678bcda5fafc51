"""``aiecs schedule add|list|rm``: periodic executions of a task, over the task API (run
by ``celery -A aiecs_worker beat``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from .common import api, client_options, connect, json_arg

__all__ = ["describe", "schedule"]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe(s: dict[str, Any]) -> str:
    """One line: task id, clock, operation, runs, last run and next run."""
    clock = f"every {s['every']:g}s" if s.get("every") is not None else f"cron {s['cron']!r}"
    last = s.get("last_run")
    last_text = f"step {last['step']} {last['status']}" if last else "none"
    return (f"{s['task_id']}  {clock}  {s['mode']}/{s['service']}.{s['task_name']}  "
            f"runs {s['runs']}  last {last_text}  next {_when(s.get('next_run_at'))}")


@click.group()
def schedule() -> None:
    """Periodic executions of a task: add, list, rm (run by `celery -A aiecs_worker beat`)."""


@schedule.command("add")
@click.argument("service")
@click.argument("operation")
@click.option("--mode", required=True, help="Registry mode of the service (e.g. chat).")
@click.option("--every", type=float, default=None, metavar="SECONDS",
              help="Run every SECONDS (at least 1).")
@click.option("--cron", default=None, metavar="EXPR",
              help="Run on a cron expression: 'minute hour day month weekday', UTC.")
@click.option("--input", "input_json", default=None, metavar="JSON",
              help="input_data as JSON, @FILE or - for stdin.")
@click.option("--context", "context_json", default=None, metavar="JSON",
              help="context as JSON, @FILE or -.")
@click.option("--task-id", default=None, help="Task id of the runs (default: generated).")
@click.option("--heavy/--fast", default=None, help="Override the queue the operation declares.")
@client_options
def schedule_add(service, operation, mode, every, cron, input_json, context_json, task_id,
                 heavy, server_url, token_opt, user):
    """Run OPERATION of SERVICE periodically; prints the task id (each run is a step)."""
    body: dict[str, Any] = {
        "mode": mode, "service": service, "task_name": operation, "every": every,
        "cron": cron, "input_data": json_arg(input_json, "--input"),
        "context": json_arg(context_json, "--context"),
    }
    body.update({k: v for k, v in (("task_id", task_id), ("heavy", heavy)) if v is not None})
    url, tok = connect(server_url, token_opt, user)
    out = api(url, tok, "POST", "/schedules", body, refused="schedule refused: ")
    click.echo(describe(out), err=True)
    click.echo(out["task_id"])


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
@client_options
def schedule_list(as_json, server_url, token_opt, user):
    """List your schedules."""
    url, tok = connect(server_url, token_opt, user)
    items = api(url, tok, "GET", "/schedules")["schedules"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
    elif not items:
        click.echo("no schedules")
    else:
        for s in items:
            click.echo(describe(s))


@schedule.command("rm")
@click.argument("task_id")
@client_options
def schedule_rm(task_id, server_url, token_opt, user):
    """Delete the schedule of TASK_ID (runs already submitted go on)."""
    url, tok = connect(server_url, token_opt, user)
    api(url, tok, "DELETE", f"/schedules/{task_id}")
    click.echo(f"deleted the schedule of {task_id}", err=True)
