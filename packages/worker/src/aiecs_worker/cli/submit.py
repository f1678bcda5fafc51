"""``aiecs submit`` and ``aiecs watch``: one task over the task API, followed live.

Exit codes of ``submit --watch`` and ``watch``: 0 COMPLETED, 1 FAILED, 3 TIMED_OUT,
4 CANCELLED, 5 could not watch (refused token, unknown task, server unreachable); 2 is a
usage error (click).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from .common import api, client_options, connect, fail, json_arg
from .watching import run_watch
from .workflow import watch_workflow, workflow_steps

__all__ = ["submit", "watch"]


@click.command()
@click.argument("service", required=False)
@click.argument("operation", required=False)
@click.option("--mode", default=None, help="Registry mode of the service (e.g. chat).")
@click.option("--input", "input_json", default=None, metavar="JSON",
              help="input_data as JSON, @FILE or - for stdin.")
@click.option("--template", "template_ref", default=None, metavar="NAME[@VERSION|:LABEL]",
              help="Run a template instead of SERVICE OPERATION: a version, or a label "
                   "(default production) read now.")
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE",
              help="A template variable (repeatable); VALUE is JSON when it parses as JSON "
                   "(12, true, [1,2], \"12\"), else text.")
@click.option("--vars", "vars_json", default=None, metavar="JSON",
              help="The template variables as one JSON object, @FILE or -.")
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
def submit(service, operation, mode, input_json, template_ref, variables, vars_json,
           context_json, task_id, step, heavy, countdown, eta, watch_, server_url, token_opt,
           user):
    """Submit OPERATION of SERVICE as a task, or a template with --template (and
    optionally watch it)."""
    body: dict[str, Any] = {"context": json_arg(context_json, "--context")}
    if template_ref is not None:
        if service or operation or mode or input_json is not None:
            fail("--template says what to run: give no SERVICE OPERATION, --mode or "
                 "--input", 2)
        body.update(template=template_arg(template_ref),
                    variables=variables_arg(variables, vars_json))
    else:
        if not (service and operation and mode):
            fail("give SERVICE OPERATION and --mode, or --template NAME", 2)
        if variables or vars_json is not None:
            fail("--var and --vars go with --template", 2)
        body.update(mode=mode, service=service, task_name=operation,
                    input_data=json_arg(input_json, "--input"))
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


def template_arg(text: str) -> dict[str, Any]:
    """``NAME``, ``NAME@VERSION`` or ``NAME:LABEL`` as the API's template reference."""
    m = re.fullmatch(r"([^@:]+)(?:@(\d+)|:([^@:]+))?", text)
    if m is None:
        fail(f"--template {text!r}: not NAME, NAME@VERSION or NAME:LABEL", 2)
    out: dict[str, Any] = {"name": m.group(1)}
    if m.group(2):
        out["version"] = int(m.group(2))
    elif m.group(3):
        out["label"] = m.group(3)
    return out


def variables_arg(pairs: tuple[str, ...], vars_json: str | None) -> dict[str, Any]:
    """--vars, then each --var NAME=VALUE over it (VALUE parsed as JSON when it is JSON)."""
    out = dict(json_arg(vars_json, "--vars"))
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            fail(f"--var {pair!r}: write NAME=VALUE", 2)
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


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
