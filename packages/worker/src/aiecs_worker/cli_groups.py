"""``aiecs batch ...`` and ``aiecs workflow ...``: batches and workflows over the task API.

Both print the id on stdout (``B=$(aiecs batch submit @items.json)``) and the human lines
on stderr. ``show`` exits 0 when everything completed, 1 when something did not, 2 while
it runs; ``watch`` waits for the end first.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from .cli import (
    EXIT_CODES,
    EXIT_WATCH_ERROR,
    _client_token,
    _fail,
    _json_arg,
    _server_url,
    _watch,
    client_options,
)

__all__ = ["batch", "watch_workflow", "workflow", "workflow_steps"]


def _api(url: str, tok: str, method: str, path: str, body: Any = None) -> Any:
    from .server.client import ApiClient, ApiClientError

    try:
        return asyncio.run(ApiClient(url, tok).request(method, path, body))
    except ApiClientError as exc:
        _fail(f"{exc.message} ({exc.status} {exc.type})", EXIT_WATCH_ERROR)


def _conn(server_url: str | None, token_opt: str | None, user: str | None) -> tuple[str, str]:
    url = _server_url(server_url)
    return url, _client_token(token_opt, user, url)


def _show(path: str, as_json: bool, render, server_url, token_opt, user) -> None:
    """GET ``path`` and print it (as JSON, or rendered); exit with the render's code."""
    url, tok = _conn(server_url, token_opt, user)
    view = _api(url, tok, "GET", path)
    if as_json:
        click.echo(json.dumps(view, indent=2))
        sys.exit(0)
    sys.exit(render(view))


# -- batches ---------------------------------------------------------------------------------
@click.group()
def batch() -> None:
    """Submit, show, watch and cancel batches."""


@batch.command("submit")
@click.argument("items")
@click.option("--batch-id", default=None, help="Batch id (default: generated).")
@click.option("--heavy/--fast", default=None, help="Override the queue of every item.")
@click.option("--watch", "watch_", is_flag=True, help="Follow the batch until it ends.")
@client_options
def batch_submit(items, batch_id, heavy, watch_, server_url, token_opt, user):
    """Submit ITEMS (JSON array of {mode, service, task_name, input_data, context}, or
    {"items": [...]}; inline, @FILE or -) as one batch."""
    data = _json_arg(items, "ITEMS", lists=True)
    body: dict[str, Any] = data if isinstance(data, dict) else {"items": data}
    if batch_id is not None:
        body["batch_id"] = batch_id
    if heavy is not None:
        body["heavy"] = heavy
    url, tok = _conn(server_url, token_opt, user)
    out = _api(url, tok, "POST", "/batches", body)
    click.echo(f"submitted batch {out['batch_id']} ({out['total']} items)", err=True)
    if not watch_:
        click.echo(out["batch_id"])
        return
    sys.exit(_watch_batch(url, tok, out["batch_id"], None))


def _show_batch(view: dict[str, Any]) -> int:
    c = view["counts"]
    click.echo(f"batch {view['batch_id']}: {view['status'].upper()} — {c['done']}/{c['total']} "
               f"ended: {c['completed']} completed, {c['failed']} failed, "
               f"{c['timed_out']} timed out, {c['cancelled']} cancelled")
    for p in view["problems"]:
        err = p.get("error") or {}
        click.echo(f"  {p['task_id']}: {p['status']}: {err.get('type')}: {err.get('message')}")
    if not view["finished"]:
        return 2
    return 0 if view["status"] == "completed" else 1


def _watch_batch(url: str, tok: str, batch_id: str, timeout: float | None) -> int:
    code = _watch(url, tok, batch_id, 0, 0, timeout)
    if code == EXIT_WATCH_ERROR:
        return code
    return _show_batch(_api(url, tok, "GET", f"/batches/{batch_id}?limit=0"))


@batch.command("show")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@client_options
def batch_show(batch_id, as_json, server_url, token_opt, user):
    """Counts, status and the items that did not complete."""
    _show(f"/batches/{batch_id}", as_json, _show_batch, server_url, token_opt, user)


@batch.command("watch")
@click.argument("batch_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@client_options
def batch_watch(batch_id, timeout, server_url, token_opt, user):
    """Follow the batch's progress until every item ended."""
    url, tok = _conn(server_url, token_opt, user)
    sys.exit(_watch_batch(url, tok, batch_id, timeout))


@batch.command("cancel")
@click.argument("batch_id")
@client_options
def batch_cancel(batch_id, server_url, token_opt, user):
    """Cancel the batch: queued items never run, running ones stop, finished ones stay."""
    url, tok = _conn(server_url, token_opt, user)
    out = _api(url, tok, "DELETE", f"/batches/{batch_id}")
    click.echo(f"cancelling {out['cancelling']} items of batch {batch_id}")


# -- workflows -------------------------------------------------------------------------------
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
    data = _json_arg(steps, "STEPS", lists=True)
    body: dict[str, Any] = data if isinstance(data, dict) else {"steps": data}
    if task_id is not None:
        body["task_id"] = task_id
    url, tok = _conn(server_url, token_opt, user)
    out = _api(url, tok, "POST", "/workflows", body)
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
    _show(f"/workflows/{task_id}", as_json, _show_workflow, server_url, token_opt, user)


@workflow.command("cancel")
@click.argument("task_id")
@client_options
def workflow_cancel(task_id, server_url, token_opt, user):
    """Cancel every step that has not ended (the others keep their results)."""
    url, tok = _conn(server_url, token_opt, user)
    out = _api(url, tok, "DELETE", f"/workflows/{task_id}")
    click.echo(f"cancelling steps {', '.join(map(str, out['cancelling'])) or '(none)'}")


def workflow_steps(url: str, tok: str, task_id: str) -> list[int] | None:
    """The steps of TASK_ID when it is a workflow, else None."""
    from .server.client import ApiClient, ApiClientError

    try:
        view = asyncio.run(ApiClient(url, tok).request("GET", f"/workflows/{task_id}"))
    except ApiClientError:
        return None
    return [s["step"] for s in view["steps"]]


def watch_workflow(url: str, tok: str, task_id: str, steps: list[int], after_seq: int,
                   timeout: float | None) -> int:
    """Follow every step until all ended, then list them; exit 0 only if all completed."""
    code = _watch(url, tok, task_id, None, after_seq, timeout, all_steps=frozenset(steps))
    if code == EXIT_WATCH_ERROR:
        return code
    return _show_workflow(_api(url, tok, "GET", f"/workflows/{task_id}"))
