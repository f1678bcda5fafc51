"""A task's arguments as a request: parsing, the payload limit, and enough of a broken
request to tell its user (the worker, the producers and the HTTP API share these)."""

from __future__ import annotations

import json
from typing import Any

from aiecs_core import InvalidTaskError, PayloadTooLargeError, TaskRequest
from aiecs_core.jsonlimits import check_depth
from pydantic import ValidationError

__all__ = ["FIELDS", "check_payload_size", "parse_request", "routable", "routable_call"]

#: The task's arguments in the specification's positional order.
FIELDS = ("task_name", "user_id", "task_id", "step", "mode", "service", "input_data", "context")


def check_payload_size(values: dict[str, Any], max_bytes: int) -> None:
    """Refuse ``input_data`` + ``context`` larger than ``max_bytes`` as compact JSON bytes
    (AIECS_MAX_PAYLOAD_BYTES): the one measure the worker and the task API both apply."""
    size = 0
    for key in ("input_data", "context"):
        if key in values:
            try:
                check_depth(values[key], what="it")  # iterative: before dumps can recurse
                size += len(json.dumps(values[key], separators=(",", ":")).encode())
            except (TypeError, ValueError) as exc:
                raise InvalidTaskError(f"{key} is not JSON: {exc}") from None
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"input_data + context is {size} bytes, over the limit of {max_bytes} "
            "(AIECS_MAX_PAYLOAD_BYTES)",
            size=size,
            limit=max_bytes,
        )


def parse_request(args: tuple | list, kwargs: dict[str, Any], max_bytes: int) -> TaskRequest:
    """Validate raw task arguments (positional in the specification's order, or keywords)."""
    if len(args) > len(FIELDS):
        raise InvalidTaskError(
            f"too many positional arguments ({len(args)}); expected at most {len(FIELDS)}: "
            + ", ".join(FIELDS)
        )
    values = dict(zip(FIELDS, args, strict=False))
    for key in kwargs:
        if key in values:
            raise InvalidTaskError(f"argument {key!r} given both positionally and by keyword")
    values.update(kwargs)
    check_payload_size(values, max_bytes)
    try:
        return TaskRequest.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<arguments>'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise InvalidTaskError(f"invalid task arguments: {problems}") from None


def routable(values: dict[str, Any]) -> TaskRequest | None:
    """Best effort: enough of a broken request to tell its user that it failed."""
    try:
        return TaskRequest.model_validate(
            {
                "task_name": values.get("task_name") or "unknown",
                "user_id": values.get("user_id"),
                "task_id": values.get("task_id"),
                "step": values.get("step", 0),
                "mode": values.get("mode") or "unknown",
                "service": values.get("service") or "unknown",
            }
        )
    except (ValidationError, TypeError):
        try:
            return TaskRequest.model_validate(
                {
                    "task_name": "unknown",
                    "user_id": values.get("user_id"),
                    "task_id": values.get("task_id"),
                    "step": values.get("step", 0) if isinstance(values.get("step"), int) else 0,
                    "mode": "unknown",
                    "service": "unknown",
                }
            )
        except (ValidationError, TypeError):
            return None


def routable_call(args: tuple | list, kwargs: dict[str, Any]) -> TaskRequest | None:
    """:func:`routable` of a task's raw call (positional and keyword arguments)."""
    return routable(dict(zip(FIELDS, args, strict=False)) | dict(kwargs))
