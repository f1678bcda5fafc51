"""An outbox entry -> what the history database stores of it.

The entry is the finished execution's state hash as the terminal script saw it (see
:func:`aiecs_worker.store.state.finish_lua`), plus ``key`` (the state key). Everything
user-supplied that is stored is redacted; the error message is capped; payloads are
stored only when the operator opts in (AIECS_HISTORY_PAYLOADS), each capped.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiecs_core import redact, redact_json

from ..store.keys import group_ids, parse_state_key

__all__ = ["ERROR_MESSAGE_CAP", "Record", "build", "compact_events", "compact_events_json",
           "decode_entry"]

#: Characters of an error message a row keeps (the column's size).
ERROR_MESSAGE_CAP = 1000


class Record:
    """One finished execution: its row, its payload (opt-in) and its compacted event log
    (JSON text, set by the recorder)."""

    __slots__ = ("entry_id", "events", "payload", "row")

    def __init__(self, entry_id: str, row: dict[str, Any], payload: dict[str, Any] | None):
        self.entry_id = entry_id
        self.row = row
        self.payload = payload
        self.events: str | None = None

    @property
    def identity(self) -> dict[str, Any]:
        r = self.row
        return {"user_id": r["user_id"], "task_id": r["task_id"], "step": r["step"],
                "finished_at": r["finished_at"]}


def decode_entry(fields: dict[bytes | str, bytes | str] | list[bytes | str]
                 ) -> dict[str, str]:
    """An outbox entry's fields (a dict, or as Redis sends them: a flat list) as text."""
    pairs = fields.items() if isinstance(fields, dict) else zip(
        fields[::2], fields[1::2], strict=True)
    return {(k.decode() if isinstance(k, bytes) else k):
            (v.decode() if isinstance(v, bytes) else v) for k, v in pairs}


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _json(v: str | None) -> Any:
    if not v:
        return None
    try:
        return json.loads(v)
    except ValueError:
        return None


def _ms(a: float | None, b: float | None) -> int | None:
    if a is None or b is None:
        return None
    return max(0, round((b - a) * 1000))


def _cap(text: str, limit: int) -> str:
    """Redacted JSON text, or a small JSON object saying it was cut when too long."""
    text = redact_json(text)
    size = len(text.encode())
    if size <= limit:
        return text
    head = text.encode()[: max(0, limit - 80)].decode(errors="ignore")
    return json.dumps({"truncated": True, "bytes": size, "head": head})


def build(entry_id: str, fields: dict[str, str], *, payloads: bool = False,
          payload_bytes: int = 65_536, now: float | None = None) -> Record | None:
    """The history of one outbox entry, or None when it names no execution (malformed)."""
    ident = parse_state_key(fields.get("key", ""))
    finished = _float(fields.get("finished"))
    if ident is None or finished is None:
        return None
    user_id, task_id, step = ident
    request = _json(fields.get("request")) or {}
    if not isinstance(request, dict):
        request = {}
    meta = _json(fields.get("meta")) or {}
    usage = _json(fields.get("usage")) or []
    usage = [u for u in usage if isinstance(u, dict)] if isinstance(usage, list) else []
    error = _json(fields.get("error"))
    raw_template = request.get("template")
    template: dict[str, Any] = raw_template if isinstance(raw_template, dict) else {}
    raw_input = request.get("input_data")
    input_data: dict[str, Any] = raw_input if isinstance(raw_input, dict) else {}
    model = next((u.get("model") for u in usage if u.get("model")), None) or (
        input_data.get("model") if isinstance(input_data.get("model"), str) else None)
    costs = [u["cost"] for u in usage if isinstance(u.get("cost"), int | float)]
    source = ("unknown" if not usage
              else "estimated" if any(u.get("estimated") for u in usage) else "reported")
    owner = fields.get("owner") or ""
    worker = meta.get("worker") or (owner.rsplit(":", 2)[0] if owner.count(":") >= 2 else None)
    submitted, started = _float(fields.get("submitted")), _float(fields.get("started"))
    queued_from = max(x for x in (submitted, _float(fields.get("eta")), 0.0) if x is not None)
    batch_id, workflow_id = group_ids(fields.get("group"))
    message = None
    if isinstance(error, dict) and error.get("message") is not None:
        message = redact(str(error["message"]))[:ERROR_MESSAGE_CAP]
    row = {
        "user_id": user_id, "task_id": task_id, "step": step,
        "celery_id": fields.get("celery_id") or None,
        "batch_id": batch_id, "workflow_id": workflow_id,
        "schedule_id": None,  # the recorder sets it when a schedule owns the task
        "mode": str(request.get("mode") or ""), "service": str(request.get("service") or ""),
        "operation": fields.get("task_name") or str(request.get("task_name") or ""),
        "model": model[:256] if model else None,
        "queue": fields.get("queue") or None,
        "worker": str(worker)[:256] if worker else None,
        "plugin_dist": meta.get("plugin"), "plugin_version": meta.get("plugin_version"),
        "template_name": template.get("name"),
        "template_version": template.get("version") if isinstance(template.get("version"), int)
        else None,
        "status": fields.get("status") or "unknown",
        "error_type": (str(error.get("type"))[:128] if isinstance(error, dict)
                       and error.get("type") else None),
        "error_message": message,
        "deliveries": int(fields.get("deliveries") or 0),
        "created_at": submitted if submitted is not None else started,
        "started_at": started,
        "first_output_at": _float(str(meta.get("first_output_at") or "")),
        "finished_at": finished,
        "queue_wait_ms": _ms(queued_from or None, started) if started else None,
        "run_ms": _ms(started, finished),
        "input_tokens": sum(int(u.get("input_tokens") or 0) for u in usage),
        "output_tokens": sum(int(u.get("output_tokens") or 0) for u in usage),
        "cached_tokens": sum(int(u.get("cached_tokens") or 0) for u in usage),
        "reasoning_tokens": sum(int(u.get("reasoning_tokens") or 0) for u in usage),
        "usage_source": source,
        "cost": round(sum(costs), 10) if costs else None,
        "price_version": meta.get("price_version"),
        "recorded_at": time.time() if now is None else now,
    }
    payload = None
    if payloads:
        result = fields.get("result") or None
        payload = {"user_id": user_id, "task_id": task_id, "step": step,
                   "finished_at": finished,
                   "input_json": _cap(json.dumps(input_data), payload_bytes)
                   if request else None,
                   "result_json": _cap(result, payload_bytes) if result else None}
    return Record(entry_id, row, payload)


def compact_events(raw: list[Any], step: int) -> list[dict[str, Any]]:
    """:func:`compact_events_json`'s events as data (an empty list when there are none)."""
    text = compact_events_json(raw, step)
    return json.loads(text) if text is not None else []


def compact_events_json(raw: list[Any], step: int) -> str | None:
    """The events of ``step`` from a task's log (XRANGE entries, field ``e``; the fields as
    a dict or as Redis sends them, a flat list), compacted, as one JSON array (None when
    there are none): the deltas of the stream events between two status events are merged
    into the first of them (the text a client saw, in one event; progress events in
    between are kept).

    Every event is parsed (its step and type decide), but only a merged stream event is
    encoded again: the others go into the array as the text the log holds (the recorder's
    CPU per row: encoding the whole log again cost as much as parsing it)."""
    parts: list[str | dict[str, Any]] = []
    open_stream: dict[str, Any] | None = None
    for _id, fields in raw:
        if isinstance(fields, dict):
            data = fields.get(b"e", fields.get("e"))
        else:  # as Redis sends it: [field, value, ...]
            data = next((fields[i + 1] for i in range(0, len(fields) - 1, 2)
                         if fields[i] in (b"e", "e")), None)
        if data is None:
            continue
        try:
            text = data.decode() if isinstance(data, bytes) else str(data)
            ev = _loads(text)
        except ValueError:  # not UTF-8 (UnicodeDecodeError) or not JSON
            continue
        if not isinstance(ev, dict) or ev.get("step") != step:
            continue
        if ev.get("type") == "stream" and isinstance(ev.get("delta"), str):
            if open_stream is not None:
                open_stream["delta"] += ev["delta"]
                continue
            open_stream = ev
            parts.append(ev)  # encoded at the end: later deltas join it
            continue
        if ev.get("type") == "status":
            open_stream = None
        parts.append(text)
    if not parts:
        return None
    return "[" + ",".join(p if isinstance(p, str) else _dumps(p) for p in parts) + "]"


_loads = json.JSONDecoder().decode


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
