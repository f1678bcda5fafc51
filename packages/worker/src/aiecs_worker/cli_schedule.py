"""What ``aiecs schedule add / list / rm`` do, over the task API (the click commands are
declared in :mod:`aiecs_worker.cli`)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["add", "list_", "remove"]


def _call(url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    from .server.client import ApiClient

    return asyncio.run(ApiClient(url, token).request(method, path, body))


def add(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a schedule; raises ApiClientError when the server refuses it."""
    return _call(url, token, "POST", "/schedules", body)


def remove(url: str, token: str, task_id: str) -> dict[str, Any]:
    return _call(url, token, "DELETE", f"/schedules/{task_id}")


def list_(url: str, token: str) -> list[dict[str, Any]]:
    return _call(url, token, "GET", "/schedules")["schedules"]


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


def print_list(schedules: list[dict[str, Any]], as_json: bool, echo) -> None:
    if as_json:
        echo(json.dumps(schedules, indent=2))
    elif not schedules:
        echo("no schedules")
    else:
        for s in schedules:
            echo(describe(s))
