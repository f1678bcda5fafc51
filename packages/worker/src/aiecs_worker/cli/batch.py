"""``aiecs batch submit|show|watch|cancel``: batches over the task API.

``submit`` prints the id on stdout (``B=$(aiecs batch submit @items.json)``) and the human
lines on stderr. ``show`` exits 0 when everything completed, 1 when something did not, 2
while it runs; ``watch`` waits for the end first.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .common import EXIT_WATCH_ERROR, api, client_options, connect, json_arg, show
from .watching import run_watch

__all__ = ["batch"]


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
    data = json_arg(items, "ITEMS", lists=True)
    body: dict[str, Any] = data if isinstance(data, dict) else {"items": data}
    if batch_id is not None:
        body["batch_id"] = batch_id
    if heavy is not None:
        body["heavy"] = heavy
    url, tok = connect(server_url, token_opt, user)
    out = api(url, tok, "POST", "/batches", body)
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
    code = run_watch(url, tok, batch_id, 0, 0, timeout)
    if code == EXIT_WATCH_ERROR:
        return code
    return _show_batch(api(url, tok, "GET", f"/batches/{batch_id}?limit=0"))


@batch.command("show")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@client_options
def batch_show(batch_id, as_json, server_url, token_opt, user):
    """Counts, status and the items that did not complete."""
    show(f"/batches/{batch_id}", as_json, _show_batch, server_url, token_opt, user)


@batch.command("watch")
@click.argument("batch_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@client_options
def batch_watch(batch_id, timeout, server_url, token_opt, user):
    """Follow the batch's progress until every item ended."""
    url, tok = connect(server_url, token_opt, user)
    sys.exit(_watch_batch(url, tok, batch_id, timeout))


@batch.command("cancel")
@click.argument("batch_id")
@client_options
def batch_cancel(batch_id, server_url, token_opt, user):
    """Cancel the batch: queued items never run, running ones stop, finished ones stay."""
    url, tok = connect(server_url, token_opt, user)
    out = api(url, tok, "DELETE", f"/batches/{batch_id}")
    click.echo(f"cancelling {out['cancelling']} items of batch {batch_id}")
