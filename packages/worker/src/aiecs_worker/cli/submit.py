"""``aiecs submit`` and ``aiecs watch``: one task over the task API, followed live.

Exit codes of ``submit --watch`` and ``watch``: 0 COMPLETED, 1 FAILED, 3 TIMED_OUT,
4 CANCELLED, 5 could not watch (refused token, unknown task, server unreachable); 2 is a
usage error (click).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .common import api, client_options, connect, json_arg
from .watching import run_watch
from .workflow import watch_workflow, workflow_steps

__all__ = ["submit", "watch"]


@click.command()
@click.argument("service")
@click.argument("operation")
@click.option("--mode", required=True, help="Registry mode of the service (e.g. chat).")
@click.option("--input", "input_json", default=None, metavar="JSON",
              help="input_data as JSON, @FILE or - for stdin.")
@click.option("--context", "context_json", default=None, metavar="JSON",
              help="context as JSON, @FILE or -.")
@click.option("--task-id", default=None, help="Task id (default: generated).")
@click.option("--step", type=int, default=None, help="Step (default: the task's next step).")
@click.option("--heavy/--fast", default=None,
              help="Override the queue the operation declares.")
@click.option("--countdown", type=float, default=None, metavar="SECONDS",
              help="Run no earlier than this many seconds from now (PENDING until then).")
@click.option("--eta", default=None, metavar="TIME",
              help="Run no earlier than this ISO 8601 time (with a timezone, e.g. ...Z).")
@click.option("--watch", "watch_", is_flag=True, help="Follow progress until the end.")
@client_options
def submit(service, operation, mode, input_json, context_json, task_id, step, heavy, countdown,
           eta, watch_, server_url, token_opt, user):
    """Submit OPERATION of SERVICE as a task (and optionally watch it)."""
    body: dict[str, Any] = {
        "mode": mode, "service": service, "task_name": operation,
        "input_data": json_arg(input_json, "--input"),
        "context": json_arg(context_json, "--context"),
    }
    if task_id is not None:
        body["task_id"] = task_id
    if step is not None:
        body["step"] = step
    if heavy is not None:
        body["heavy"] = heavy
    body.update({k: v for k, v in (("countdown", countdown), ("eta", eta)) if v is not None})
    url, tok = connect(server_url, token_opt, user)
    out = api(url, tok, "POST", "/tasks", body, refused="submit refused: ")
    # the human line on stderr; stdout carries only the task id (TASK=$(aiecs submit ...))
    click.echo(f"submitted task {out['task_id']} step {out['step']} ({out['queue']})",
               err=True)
    if not watch_:
        click.echo(out["task_id"])
        return
    sys.exit(run_watch(url, tok, out["task_id"], out["step"], 0, None))


@click.command()
@click.argument("task_id")
@click.option("--step", type=int, default=None, help="Step to wait for (default: the latest).")
@click.option("--after-seq", type=int, default=0, show_default=True,
              help="Only show events after this sequence number.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@client_options
def watch(task_id, step, after_seq, timeout, server_url, token_opt, user):
    """Follow TASK_ID's progress live until it finishes; exit with its status.

    A workflow's task is followed until every step ended, and its steps are listed."""
    url, tok = connect(server_url, token_opt, user)
    steps = workflow_steps(url, tok, task_id) if step is None else None
    if steps:
        sys.exit(watch_workflow(url, tok, task_id, steps, after_seq, timeout))
    sys.exit(run_watch(url, tok, task_id, step, after_seq, timeout))
