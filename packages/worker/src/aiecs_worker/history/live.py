"""An execution still in Redis as a history row: what ``GET /executions/{task_id}/{step}``
answers while the execution's state exists (the recorder writes the database's row from
the outbox when it ends; until then, and as long as Redis keeps it, this is its view).

Keys are the ``executions`` table's column names; what only the recorder knows (the
worker's name, the plugin and price versions, ``id``, ``recorded_at``) is None.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..store.keys import batch_key, is_flow_key

__all__ = ["COLUMNS", "row_from_state"]

#: The ``executions`` table's columns (aiecs_history.tables), in its order.
COLUMNS = (
    "id", "user_id", "task_id", "step", "celery_id", "batch_id", "workflow_id", "schedule_id",
    "mode", "service", "operation", "model", "queue", "worker", "plugin_dist",
    "plugin_version", "template_name", "template_version", "status", "error_type",
    "error_message", "deliveries", "created_at", "started_at", "first_output_at",
    "finished_at", "queue_wait_ms", "run_ms", "input_tokens", "output_tokens",
    "cached_tokens", "reasoning_tokens", "usage_source", "cost", "price_version",
    "recorded_at",
)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ms(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else max(0, round((end - start) * 1000))


def row_from_state(user_id: str, task_id: str, step: int, state: dict[str, Any],
                   request: str | bytes | None = None) -> dict[str, Any]:
    """The row of one execution from its decoded state hash
    (:func:`aiecs_worker.store.state.decode_state`) and, while it has not ended, its
    request JSON (the hash's ``request`` field)."""
    req: dict[str, Any] = {}
    if request:
        try:
            req = json.loads(request)
        except ValueError:
            req = {}
    result: dict[str, Any] = _dict(state.get("result"))
    error: dict[str, Any] = _dict(state.get("error"))
    usage = [u for u in state.get("usage") or [] if isinstance(u, dict)]
    costs = [u["cost"] for u in usage if u.get("cost") is not None]
    group = state.get("group") or ""
    template = _dict(req.get("template"))
    submitted, started, finished = (state.get("submitted"), state.get("started"),
                                    state.get("finished"))
    row = dict.fromkeys(COLUMNS)
    row.update(
        user_id=user_id, task_id=task_id, step=step, celery_id=state.get("celery_id"),
        batch_id=(group[len(batch_key(user_id, "")):]
                  if group.startswith(batch_key(user_id, "")) else None),
        workflow_id=task_id if is_flow_key(group) else None,
        mode=req.get("mode") or result.get("mode"),
        service=req.get("service") or result.get("service"),
        operation=state.get("task_name") or req.get("task_name"),
        model=usage[0].get("model") if usage else None,
        queue=state.get("queue"),
        template_name=template.get("name"), template_version=template.get("version"),
        status=state.get("status"),
        error_type=error.get("type"), error_message=(error.get("message") or None),
        deliveries=state.get("deliveries") or 0,
        created_at=_iso(submitted), started_at=_iso(started), finished_at=_iso(finished),
        queue_wait_ms=_ms(submitted, started), run_ms=_ms(started, finished),
        input_tokens=sum(int(u.get("input_tokens") or 0) for u in usage),
        output_tokens=sum(int(u.get("output_tokens") or 0) for u in usage),
        cached_tokens=0, reasoning_tokens=0,
        usage_source=("unknown" if not usage else
                      "estimated" if all(u.get("estimated") for u in usage) else "reported"),
        cost=sum(costs) if costs else None,
    )
    if row["error_message"]:
        row["error_message"] = row["error_message"][:1000]
    return row
