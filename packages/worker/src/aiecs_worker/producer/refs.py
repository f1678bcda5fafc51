"""JSON references in a workflow step's input: ``{"$ref": "steps.<step>.result.<path>"}``.

A reference is an object with the single key ``$ref``; its path names a step and walks
that step's result: object keys, or list indexes written as integers. Nothing is
evaluated: a reference is replaced by the value found, whatever its type.

References multiply: a 40-byte reference to a 500 KB result is 500 KB once resolved. So
a step holds at most ``AIECS_MAX_REFS_PER_STEP`` of them (checked at submission) and its
input is size-checked again once resolved (:func:`resolved_size`, before it is built).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["RefError", "find_refs", "parse_ref", "resolve", "resolved_size"]

_REF = re.compile(r"^steps\.(\d+)\.result((?:\.[^.]+)*)$")


class RefError(ValueError):
    """A reference that is malformed, or whose path is not in the result."""


def parse_ref(ref: Any) -> tuple[int, list[str]]:
    """``steps.2.result.a.0`` -> ``(2, ["a", "0"])``."""
    if not isinstance(ref, str):
        raise RefError(f"$ref must be a string like 'steps.1.result.text', not {ref!r}")
    m = _REF.fullmatch(ref)
    if m is None:
        raise RefError(f"$ref {ref!r} is not of the form 'steps.<step>.result[.<key>...]'")
    return int(m.group(1)), [p for p in m.group(2).split(".") if p]


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "$ref" in value


def find_refs(value: Any, loc: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every reference in ``value``: (its location, the ``$ref`` string)."""
    stack = [(loc, value)]
    while stack:
        here, v = stack.pop()
        if _is_ref(v):
            yield here, v["$ref"]
        elif isinstance(v, dict):
            stack.extend((here + (k,), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((here + (i,), x) for i, x in enumerate(v))


def _walk(result: Any, path: list[str], ref: str) -> Any:
    value = result
    for part in path:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise RefError(f"{ref}: the result has no {part!r} there")
    return value


def _lookup(ref: Any, results: dict[int, Any]) -> Any:
    step, path = parse_ref(ref)
    if step not in results:
        raise RefError(f"{ref}: step {step} has no result")
    return _walk(results[step], path, ref)


def _json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (the measure of AIECS_MAX_PAYLOAD_BYTES)."""
    return len(json.dumps(value, separators=(",", ":")).encode())


def resolved_size(value: Any, results: dict[int, Any]) -> int:
    """The compact JSON size of ``resolve(value, results)``, without building it.

    Compact JSON is the concatenation of its parts' JSON, so replacing a reference changes
    the size by exactly the difference of the two values' sizes; each distinct reference
    is measured once, however many times it appears."""
    size = _json_size(value)
    measured: dict[str, int] = {}
    for _, ref in find_refs(value):
        if ref not in measured:
            measured[ref] = _json_size(_lookup(ref, results)) - _json_size({"$ref": ref})
        size += measured[ref]
    return size


def resolve(value: Any, results: dict[int, Any]) -> Any:
    """``value`` with each reference replaced by the value in ``results`` (step -> the
    step's operation result)."""
    if _is_ref(value):
        return _lookup(value["$ref"], results)
    if isinstance(value, dict):
        return {k: resolve(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, results) for v in value]
    return value
