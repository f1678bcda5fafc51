"""``aiecs workflow submit|show|cancel``: workflows over the task API (``aiecs watch
TASK_ID`` follows one: :func:`watch_workflow`).

``submit`` prints the id on stdout and the human lines on stderr. ``show`` exits 0 when
every step completed, the status's code when it ended otherwise, 2 while it runs.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .client import ApiClientError, call
from .common import EXIT_CODES, EXIT_WATCH_ERROR, api, client_options, connect, json_arg, show
from .watching import run_watch

__all__ = ["watch_workflow", "workflow", "workflow_steps"]


@click.group()
def workflow() -> None:
    """Submit, show and cancel workflows (watch them with ``aiecs watch TASK_ID``)."""


@workflow.command("submit")
@click.argument("steps")
@click.option("--task-id", default=None, help="Task id (default: generated).")
@click.option("--watch", "watch_", is_flag=True, help="Follow every step until the end.")
@client_options
def workflow_submit(steps, task_id, watch_, server_url, token_opt, user):
    """Submit STEPS (JSON array of {step, mode, service, task_name, input_data,
    depends_on}, or {"steps": [...]}; inline, @FILE or -) as one workflow."""
    data = json_arg(steps, "STEPS", lists=True)
    body: dict[str, Any] = data if isinstance(data, dict) else {"steps": data}
    if task_id is not None:
        body["task_id"] = task_id
    url, tok = connect(server_url, token_opt, user)
    out = api(url, tok, "POST", "/workflows", body)
    click.echo(f"submitted workflow {out['task_id']} (steps "
               f"{', '.join(map(str, out['steps']))})", err=True)
    if not watch_:
        click.echo(out["task_id"])
        return
    sys.exit(watch_workflow(url, tok, out["task_id"], out["steps"], 0, None))


def _show_workflow(view: dict[str, Any]) -> int:
    click.echo(f"workflow {view['task_id']}: {view['status'].upper()}")
    for s in view["steps"]:
        deps = f" after {', '.join(map(str, s['depends_on']))}" if s["depends_on"] else ""
        err = s.get("error") or {}
        why = f": {err.get('message')}" if err else ""
        click.echo(f"  step {s['step']} {s['mode']}/{s['service']}.{s['task_name']}{deps}: "
                   f"{(s['status'] or '?').upper()}{why}")
    return 2 if view["status"] == "running" else EXIT_CODES.get(view["status"], 1)


@workflow.command("show")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@client_options
def workflow_show(task_id, as_json, server_url, token_opt, user):
    """The workflow's steps, their dependencies and states."""
    show(f"/workflows/{task_id}", as_json, _show_workflow, server_url, token_opt, user)


@workflow.command("cancel")
@click.argument("task_id")
@client_options
def workflow_cancel(task_id, server_url, token_opt, user):
    """Cancel every step that has not ended (the others keep their results)."""
    url, tok = connect(server_url, token_opt, user)
    out = api(url, tok, "DELETE", f"/workflows/{task_id}")
    click.echo(f"cancelling steps {', '.join(map(str, out['cancelling'])) or '(none)'}")


def workflow_steps(url: str, tok: str, task_id: str) -> list[int] | None:
    """The steps of TASK_ID when it is a workflow, else None."""
    try:
        view = call(url, tok, "GET", f"/workflows/{task_id}")
    except ApiClientError:
        return None
    return [s["step"] for s in view["steps"]]


def watch_workflow(url: str, tok: str, task_id: str, steps: list[int], after_seq: int,
                   timeout: float | None) -> int:
    """Follow every step until all ended, then list them; exit 0 only if all completed."""
    code = run_watch(url, tok, task_id, None, after_seq, timeout, all_steps=frozenset(steps))
    if code == EXIT_WATCH_ERROR:
        return code
    return _show_workflow(api(url, tok, "GET", f"/workflows/{task_id}"))
